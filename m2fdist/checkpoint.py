"""Sharded DeepSpeed checkpoints: tagged saves, an atomic ``latest``, keep-last-K plus best, exact resume.

Layout under ``output_dir/checkpoints``: one folder per tag (``step00000040``) holding DeepSpeed's
shards and ``m2fdist.json`` (step, world size), and the files ``latest`` and ``best`` naming tags.
``latest`` moves only after every rank has finished writing (DeepSpeed's own ``latest`` is written by
rank 0 possibly before the other ranks' shards are on disk, so it is switched off).

Every rank's RNG states (torch, numpy, python) are gathered into the client state, because under
ZeRO 1–2 only rank 0 writes it; on resume each rank takes back its own. With the data position, that
makes a resumed run replay the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

META = "m2fdist.json"


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_rng() -> list[dict[str, Any]]:
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, rng_state())
    return states


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_pointer(ckpt_dir: Path, name: str) -> str | None:
    path = Path(ckpt_dir) / name
    return path.read_text().strip() if path.is_file() else None


def save(engine: Any, ckpt_dir: Path, step: int, client_state: dict[str, Any], keep_last: int,
         best_tag: str | None) -> str:
    """Save on every rank, then (rank 0) record metadata, move ``latest`` and prune old tags."""
    tag = tag_for(step)
    client_state = {**client_state, "rng": gather_rng()}
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    dist.barrier()
    if dist.get_rank() == 0:
        meta = {"step": step, "world_size": dist.get_world_size(), "tag": tag}
        _write_atomic(Path(ckpt_dir) / tag / META, json.dumps(meta))
        _write_atomic(Path(ckpt_dir) / "latest", tag)
        prune(Path(ckpt_dir), keep_last, best_tag)
    dist.barrier()
    return tag


def mark_best(ckpt_dir: Path, tag: str) -> None:
    if dist.get_rank() == 0:
        _write_atomic(Path(ckpt_dir) / "best", tag)


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Tags whose save finished (their metadata is written after every rank's shards)."""
    if not Path(ckpt_dir).is_dir():
        return []
    return sorted(p.parent.name for p in Path(ckpt_dir).glob(f"step*/{META}"))


def prune(ckpt_dir: Path, keep_last: int, best_tag: str | None) -> None:
    tags = complete_tags(ckpt_dir)
    keep = set(tags[-keep_last:]) | {best_tag, read_pointer(ckpt_dir, "best")}
    for tag in tags:
        if tag not in keep:
            shutil.rmtree(ckpt_dir / tag, ignore_errors=True)
    for partial in Path(ckpt_dir).glob("step*"):  # saves killed half-way
        if partial.is_dir() and not (partial / META).exists() and partial.name < (tags[-1] if tags else ""):
            shutil.rmtree(partial, ignore_errors=True)


def resolve(resume: str, output_dir: Path) -> tuple[Path, str] | None:
    """``resume`` → (checkpoint folder, tag): "" starts fresh, ``auto`` takes ``latest`` if any, else a tag
    under output_dir/checkpoints or a path to a tag folder."""
    ckpt_dir = Path(output_dir) / "checkpoints"
    if not resume:
        return None
    if resume == "auto":
        tag = read_pointer(ckpt_dir, "latest")
        return (ckpt_dir, tag) if tag else None
    path = Path(resume)
    if path.is_dir() and (path / META).is_file():
        return path.parent, path.name
    if (ckpt_dir / resume / META).is_file():
        return ckpt_dir, resume
    raise FileNotFoundError(f"resume={resume}: no finished checkpoint there (nor under {ckpt_dir})")


def saved_world_size(ckpt_dir: Path, tag: str) -> int:
    return json.loads((Path(ckpt_dir) / tag / META).read_text())["world_size"]


def to_universal(ckpt_dir: Path, tag: str) -> Path:
    """Convert a tag to DeepSpeed's universal format (once; rank 0), for loading on another world size."""
    out = Path(ckpt_dir) / f"{tag}_universal"
    if dist.get_rank() == 0 and not (out / META).is_file():
        cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
               str(Path(ckpt_dir) / tag), "--output_folder", str(out), "--inject_missing_state"]
        subprocess.run(cmd, check=True, capture_output=True)
        shutil.copy(Path(ckpt_dir) / tag / META, out / META)
    dist.barrier()
    return out
