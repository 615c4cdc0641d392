"""On a real SLURM cluster (two slurmd "nodes" on this machine, launch/local_slurm.py): a two-node job of
launch/slurm.sbatch, one rank a node, preempted by a job of a higher-priority partition mid-epoch, saves at the
signal, is requeued, and finishes with every step once and the losses of an uninterrupted one-node run."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from launching import BIN, ENV, ROOT, STOPPABLE_RUN, common, log_tail, records

pytestmark = pytest.mark.launch

spec = importlib.util.spec_from_file_location("local_slurm", ROOT / "launch" / "local_slurm.py")
local_slurm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(local_slurm)

RUN = STOPPABLE_RUN  # batch 1 on 2 ranks: about 15 steps an epoch, so the preemption lands mid-epoch


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """The two-node cluster, up for this module's tests; every daemon it started is stopped by PID after."""
    folder = tmp_path_factory.mktemp("slurm")
    env = {**ENV, **local_slurm.up(folder), "M2FDIST_DEEPSPEED": str(BIN / "deepspeed")}
    try:
        yield env, folder
    finally:
        stopped = local_slurm.down(folder)
        assert len(stopped) == 4, stopped  # munged, slurmctld and both slurmd were ours to stop
        left = [p for _, p in local_slurm._pids(folder) if Path(f"/proc/{p}").exists()]
        assert not left, f"daemons left running: {left}"


def _sbatch(env: dict, *args: str) -> str:
    done = subprocess.run(["sbatch", "--parsable", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def _job(env: dict, job: str) -> dict[str, str]:
    done = subprocess.run(["scontrol", "show", "job", "-o", job], env=env, capture_output=True, text=True)
    return dict(re.findall(r"(\w+)=(\S*)", done.stdout))


def _until(what, timeout: float, message) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            pytest.fail(message())
        time.sleep(0.2)


def _last_step(out: Path) -> int:
    try:
        return max((r["step"] for r in records(out)), default=0)
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_a_preempted_two_node_job_requeues_and_resumes_exactly(slurm, work, unstopped_text_run, tmp_path):
    env, folder = slurm
    out, joblog = tmp_path / "run", tmp_path / "job.out"

    def on_slurm() -> str:
        job = _sbatch(env, "--nodes=2", f"--output={joblog}", "--time=20", "launch/slurm.sbatch",
                      "configs/tiny/text.yaml", *common(work, out), *RUN)
        say = lambda: f"job {job}: {_job(env, job)}\n{joblog.read_text() if joblog.exists() else ''}"  # noqa: E731
        _until(lambda: _last_step(out) >= 4, 240, say)
        # a job of the high partition that needs both nodes whole: the scheduler preempts ours by requeueing it
        high = _sbatch(env, "-p", "high", "--nodes=2", "--ntasks-per-node=1", f"--cpus-per-task="
                       f"{local_slurm.CPUS_PER_NODE}", f"--output={tmp_path / 'high.out'}", "--wrap", "sleep 2")
        _until(lambda: _job(env, job).get("JobState") == "PENDING", 120, say)
        # SLURM holds a requeued job back 121 s (BeginTime); an operator lets it go at once
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, check=True)
        _until(lambda: _job(env, high).get("JobState") == "COMPLETED", 120, lambda: f"high: {_job(env, high)}")
        _until(lambda: _job(env, job).get("JobState") == "COMPLETED", 300, say)
        return job

    ref = unstopped_text_run()  # the uninterrupted run: test_preemption's, or started now beside the job
    on_slurm()
    text = joblog.read_text(errors="replace")
    assert "(restart 0)" in text and "(restart 1)" in text, text[-3000:]  # one output file, appended
    # each node's rank caught the preemption's first signal (SIGTERM, or the job's --signal=USR1 sent with it)
    assert len(re.findall(r"rank \d: SIG(TERM|USR1) received: saving a checkpoint", text)) == 2, text[-3000:]
    saved = int(re.search(r"saved \S+ at step (\d+) of 40", text).group(1))
    assert f"resumed from {out / 'checkpoints' / f'step{saved:08d}'} at step {saved}" in text
    assert 4 <= saved < 40
    final = json.loads((out / "final.json").read_text())
    assert final["world_size"] == 2 and final["step"] == 40
    assert [r["step"] for r in records(out)] == list(range(1, 41)), log_tail(joblog)  # every step once
    expected = {r["step"]: r["loss"] for r in records(ref.result())}
    assert [r["loss"] for r in records(out)] == pytest.approx([expected[s] for s in range(1, 41)], rel=1e-6,
                                                             abs=1e-7)
