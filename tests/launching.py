"""Helpers for tests that start the real launchers (deepspeed, accelerate) on CPU."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], log: Path, env: dict | None = None, check: bool = True) -> int:
    with log.open("w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, env=env or ENV, stdout=f, stderr=subprocess.STDOUT).returncode
    if check and rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        pytest.fail(f"{shlex.join(cmd)} exited {rc}:\n{tail}")
    return rc


def deepspeed(script: str, config: str, overrides: list[str], log: Path, n: int = 2, **kw) -> int:
    cmd = [str(BIN / "deepspeed"), "--num_gpus", str(n), "--master_port", str(free_port()), script,
           "--config", config, *overrides]
    return run(cmd, log, **kw)


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
