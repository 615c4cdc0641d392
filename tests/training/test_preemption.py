"""Preemption loses nothing: a SIGTERM to the whole launch (what SLURM sends) or to the deepspeed runner alone (what
a supervisor sends) saves the step it arrives at on every rank, leaves no process behind, and resume=auto then
goes on exactly as a run that was never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from launching import BIN, ENV, ROOT, STOPPABLE_RUN, common, deepspeed, log_tail, records

from m2fdist.runtime.process import free_port
from m2fdist.training import checkpoint

pytestmark = pytest.mark.launch

RUN = STOPPABLE_RUN  # batch 1 on 2 ranks: ~15 steps an epoch over the tiny train split, so both stops land mid-epoch


def _start(work: dict, out: Path, log: Path, *extra: str) -> subprocess.Popen:
    cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), "launch/train.py",
           "--config", "configs/tiny/text.yaml", *common(work, out), *RUN, *extra]
    with log.open("w") as f:
        return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _last_step(out: Path) -> int:
    try:
        return max((r["step"] for r in records(out)), default=0)
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or a line half written
        return 0


def _when_past(proc: subprocess.Popen, out: Path, step: int, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while _last_step(out) < step:
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the run ended or stalled before step {step}:\n{log_tail(log)}")
        time.sleep(0.05)


def _group(pgid: int) -> list[int]:
    """Live processes of a process group (zombies do not count: they are exited, awaiting their parent)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def _gone(pgid: int, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while _group(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not _group(pgid)


def _saved_at(log: Path, ckpt: Path) -> int:
    """The step the stopped run says it saved, checked against the checkpoint on disk."""
    text = log.read_text(errors="replace")
    line = [ln for ln in text.splitlines() if "resume=auto continues from there" in ln]
    assert len(line) == 1, log_tail(log)
    step = int(line[0].split(" at step ")[1].split()[0])
    assert checkpoint.read_pointer(ckpt, "latest") == checkpoint.tag_for(step)
    assert (ckpt / checkpoint.tag_for(step) / checkpoint.META).is_file()
    return step


def test_a_stopped_run_saves_its_step_and_resumes_exactly(work, unstopped_text_run, tmp_path):
    out = tmp_path / "run"

    def stopped_by_slurm() -> int:
        proc = _start(work, out, tmp_path / "a.log")
        _when_past(proc, out, 4, tmp_path / "a.log")
        os.killpg(proc.pid, signal.SIGTERM)  # scancel, a time limit, preemption: every process of the job
        proc.wait(timeout=120)
        assert _gone(proc.pid), f"left behind: {_group(proc.pid)}"
        return proc.returncode

    ref = unstopped_text_run()  # the uninterrupted run, beside the stopped one
    rc = stopped_by_slurm()
    text = (tmp_path / "a.log").read_text(errors="replace")
    assert rc != 0 and not (out / "final.json").exists(), log_tail(tmp_path / "a.log")
    assert text.count("SIGTERM received: saving a checkpoint at the next step") == 2  # each rank caught it
    first = _saved_at(tmp_path / "a.log", out / "checkpoints")
    assert 4 <= first < 40 and first == _last_step(out)  # the signal's step itself was saved: nothing lost

    # a supervisor stops the runner alone: the launcher and ranks must not train on as orphans
    proc = _start(work, out, tmp_path / "b.log", "resume=auto")
    _when_past(proc, out, first + 3, tmp_path / "b.log")
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    assert _gone(proc.pid), f"orphans still running: {_group(proc.pid)}"
    assert f"the deepspeed runner (pid {proc.pid}) is gone" in (tmp_path / "b.log").read_text(errors="replace")
    second = _saved_at(tmp_path / "b.log", out / "checkpoints")
    assert first + 3 <= second < 40 and not (out / "final.json").exists()

    deepspeed("launch/train.py", "configs/tiny/text.yaml", [*common(work, out), *RUN, "resume=auto"],
              tmp_path / "c.log")
    assert [r["step"] for r in records(out)] == list(range(1, 41))  # every step once, none lost or doubled
    expected = {r["step"]: r["loss"] for r in records(ref.result())}
    assert [r["loss"] for r in records(out)] == pytest.approx([expected[s] for s in range(1, 41)], rel=1e-6,
                                                             abs=1e-7)
    assert json.loads((out / "final.json").read_text())["step"] == 40
