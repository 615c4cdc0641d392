"""Helpers for tests that start the real launchers (deepspeed, accelerate) on CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from m2fdist.runtime.process import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


# Longest a single launch may take before the test fails with stacks of every process it started. A tiny
# stage takes well under a minute on 2 cores; the limit only turns a hang into a readable failure.
LAUNCH_TIMEOUT = float(os.environ.get("M2FDIST_TEST_LAUNCH_TIMEOUT", 600))


def process_tree(pid: int) -> list[int]:
    """The pid and every descendant (from /proc), so a hang report covers ranks and loader workers."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def stacks_of(pid: int) -> str:
    spy = shutil.which("py-spy", path=str(BIN))
    if spy is None:
        return "(py-spy not installed: no stacks)"
    dumps = []
    for p in process_tree(pid):
        r = subprocess.run([spy, "dump", "--pid", str(p)], capture_output=True, text=True, timeout=60)
        dumps.append(f"--- pid {p}\n{r.stdout or r.stderr}")
    return "\n".join(dumps)


def log_tail(log: Path, lines: int = 40) -> str:
    """The last lines of a launch's log, for a failure message."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def run(cmd: list[str], log: Path, env: dict | None = None, check: bool = True,
        timeout: float = LAUNCH_TIMEOUT) -> int:
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env or ENV, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stacks = stacks_of(proc.pid)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            (log.parent / f"{log.stem}.stacks.txt").write_text(stacks)
            tail = log_tail(log)
            pytest.fail(f"{shlex.join(cmd)} still running after {timeout:.0f} s; killed.\n{tail}\n{stacks}")
    if check and rc != 0:
        tail = log_tail(log)
        pytest.fail(f"{shlex.join(cmd)} exited {rc}:\n{tail}")
    return rc


def concurrently(*calls: Callable[[], Any]) -> list[Any]:
    """Run independent launches two at a time and return their results in order (a failure re-raises).

    Much of a launch is its launcher's and ranks' imports on one core each; two side by side keep both cores
    busy. Their numbers do not change: every process runs one thread (``OMP_NUM_THREADS=1``) and each launch
    has its own port and output folder.
    """
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(c) for c in calls]
        return [f.result() for f in futures]


def deepspeed(script: str, config: str, overrides: list[str], log: Path, n: int = 2, **kw) -> int:
    cmd = [str(BIN / "deepspeed"), "--num_gpus", str(n), "--master_port", str(free_port()), script,
           "--config", config, *overrides]
    return run(cmd, log, **kw)


def two_ranks(source: str, folder: Path, name: str) -> Any:
    """Run ``source`` (a script whose last argument is where rank 0 writes JSON) as 2 ranks under the deepspeed
    launcher, from ``folder``; returns what it wrote (its log: ``folder/name.log``)."""
    script, out = folder / f"{name}.py", folder / f"{name}.json"
    script.write_text(source)
    run([str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), str(script), str(out)],
        folder / f"{name}.log")
    return json.loads(out.read_text())


def records(out: Path, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def assert_loss_falls(out: Path, k: int = 3) -> None:
    losses = [r["loss"] for r in records(out)]
    assert len(losses) >= 2 * k
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    assert last < first, f"loss did not fall: {losses}"


def fusion_args(work: dict, features: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.shards={features}", f"output_dir={out}", "fusion.dim_audio=16", "wandb.mode=disabled",
            "data.eval_splits=[dev]", *extra]




def common(work: dict, out: Path) -> list[str]:
    return [f"data.shards={work['shards']}", f"output_dir={out}", f"text.model={work['roberta']}"]


# batch 1 on 2 ranks: about 15 steps an epoch, so a stop lands mid-epoch. The run tests/training/test_preemption.py
# stops and test_slurm.py preempts; both compare it with one uninterrupted run of it (conftest.unstopped_text_run).
STOPPABLE_RUN = ["data.batch_size=1", "train.max_steps=40", "train.log_every=1", "train.warmup_steps=0",
                 "data.eval_splits=[dev]", "wandb.mode=disabled", "precision=fp32",
                 "deepspeed=configs/ds/zero2_fp32.json"]


def sweep_command(spec: dict, params: dict) -> list[str]:
    """The argv a W&B agent runs for these sampled parameters (wandb's own helpers, as in wandb_agent)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    sweep_vars = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    sweep_vars.update({"interpreter": ["python"], "program": [spec["program"]], "env": ["/usr/bin/env"]})
    argv = []
    for c in create_sweep_command(list(spec["command"])):
        c = str(c)
        argv += sweep_vars.get(c[2:-1], []) if c.startswith("${") and c.endswith("}") else [c]
    return argv


SWEEPS = ("meld_fusion", "iemocap_fusion", "meld_audio")


def sweep_sample(name: str, pick: int = 0) -> tuple[list[str], dict]:
    """The sweep's command for one sample of its parameters: value ``pick`` of each list (wrapping round), or
    the range's lower end (pick 0) or upper end (any other pick)."""
    spec = yaml.safe_load((ROOT / "configs" / "sweeps" / f"{name}.yaml").read_text())
    params = {key: p["values"][pick % len(p["values"])] if "values" in p else p["max" if pick else "min"]
              for key, p in spec["parameters"].items()}
    return sweep_command(spec, params), params


# launch/local_slurm.py, the two-node SLURM cluster the `slurm` fixture (conftest.py) starts
_spec = importlib.util.spec_from_file_location("local_slurm", ROOT / "launch" / "local_slurm.py")
local_slurm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(local_slurm)


def sbatch(env: dict, *args: str) -> str:
    """Submit a job from the repository root; its id."""
    done = subprocess.run(["sbatch", "--parsable", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def slurm_job(env: dict, job: str) -> dict[str, str]:
    """What ``scontrol show job`` says of the job, as key=value pairs."""
    done = subprocess.run(["scontrol", "show", "job", "-o", job], env=env, capture_output=True, text=True)
    return dict(re.findall(r"(\w+)=(\S*)", done.stdout))


def until(what: Callable[[], Any], timeout: float, message: Callable[[], str]) -> None:
    """Wait for ``what()`` to hold, polling; after ``timeout`` seconds the test fails with ``message()``."""
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            pytest.fail(message())
        time.sleep(0.2)
