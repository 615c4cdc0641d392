"""On a real SLURM cluster (two slurmd "nodes" on this machine, launch/local_slurm.py): a two-node job of
launch/slurm.sbatch, one rank a node, preempted by a job of a higher-priority partition mid-epoch, saves at the
signal, is requeued, and finishes with every step once and the losses of an uninterrupted one-node run."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from launching import STOPPABLE_RUN, common, local_slurm, log_tail, records, sbatch, slurm_job, until

pytestmark = pytest.mark.launch

RUN = STOPPABLE_RUN  # batch 1 on 2 ranks: about 15 steps an epoch, so the preemption lands mid-epoch


def _last_step(out: Path) -> int:
    try:
        return max((r["step"] for r in records(out)), default=0)
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_a_preempted_two_node_job_requeues_and_resumes_exactly(slurm, work, unstopped_text_run, tmp_path):
    env, folder = slurm
    out, joblog = tmp_path / "run", tmp_path / "job.out"

    def on_slurm() -> str:
        job = sbatch(env, "--nodes=2", f"--output={joblog}", "--time=20", "launch/slurm.sbatch",
                      "configs/tiny/text.yaml", *common(work, out), *RUN)
        say = lambda: f"job {job}: {slurm_job(env, job)}\n{joblog.read_text() if joblog.exists() else ''}"  # noqa: E731
        until(lambda: _last_step(out) >= 4, 240, say)
        # a job of the high partition that needs both nodes whole: the scheduler preempts ours by requeueing it
        high = sbatch(env, "-p", "high", "--nodes=2", "--ntasks-per-node=1", f"--cpus-per-task="
                       f"{local_slurm.CPUS_PER_NODE}", f"--output={tmp_path / 'high.out'}", "--wrap", "sleep 2")
        until(lambda: slurm_job(env, job).get("JobState") == "PENDING", 120, say)
        # SLURM holds a requeued job back 121 s (BeginTime); an operator lets it go at once
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, check=True)
        until(lambda: slurm_job(env, high).get("JobState") == "COMPLETED", 120, lambda: f"high: {slurm_job(env, high)}")
        until(lambda: slurm_job(env, job).get("JobState") == "COMPLETED", 300, say)
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
