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
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from m2fdist.common import atomic

META = "m2fdist.json"
TAG = re.compile(r"step\d{8}(_universal)?")
# Settings a run may change when it resumes: they do not alter what the next step computes.
RESUMABLE_CHANGES = ("output_dir", "resume", "allow_config_change", "train.epochs", "train.max_steps",
                     "train.save_every", "train.eval_every", "train.log_every", "train.keep_last",
                     "train.stop_signals", "train.requeue", "text.partition_at_load", "data.num_workers",
                     "data.eval_splits", "wandb.",
                     # gone from run configs (extraction has its own); feature widths now come from the features
                     # (0 in the text / audio / visual stages), and a fusion run whose features changed fails on load
                     "extract.", "fusion.dim_text", "fusion.dim_audio", "fusion.dim_visual")


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def check_tag(tag: str, where: str) -> str:
    """A checkpoint tag is a plain name like ``step00000040``; anything else (a path, ``..``) is refused."""
    if not TAG.fullmatch(tag):
        raise ValueError(f"{where} holds {tag[:80]!r}, which is not a checkpoint tag (stepNNNNNNNN)")
    return tag


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


def read_pointer(ckpt_dir: Path, name: str) -> str | None:
    """The tag that ``latest`` or ``best`` names, checked to be a tag before anyone uses it as a path."""
    path = Path(ckpt_dir) / name
    if not path.is_file():
        return None
    return check_tag(path.read_text().strip(), str(path))


def save(engine: Any, ckpt_dir: Path, step: int, client_state: dict[str, Any], keep_last: int,
         best_tag: str | None, frozen_source: str | None = None) -> str:
    """Save on every rank, then (rank 0) record metadata, move ``latest`` and prune old tags.

    ``frozen_source``: where the model's frozen parameters come from when it is rebuilt (a LoRA run's base
    model). They are then left out of the checkpoint (an 8B base is 16 GB per save otherwise); the metadata
    names the source, and resume and export read them back from it.

    A write that fails on any rank (a full disk above all) fails the save on every rank alike, after
    DeepSpeed's own collectives, so no rank waits in one: the partial tag is removed, ``latest`` and the earlier
    tags stay as they were, and a full disk is :class:`~m2fdist.common.atomic.NoSpaceLeft` naming the tag.
    """
    tag = tag_for(step)
    client_state = {**client_state, "rng": gather_rng()}
    guarded = _GuardedWrites(engine.checkpoint_engine)
    engine.checkpoint_engine = guarded
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False,
                               exclude_frozen_parameters=frozen_source is not None)
    finally:
        engine.checkpoint_engine = guarded.inner
    dist.barrier()
    error = guarded.error
    if error is None and dist.get_rank() == 0:
        try:
            meta = {"step": step, "world_size": dist.get_world_size(), "tag": tag,
                    "config": client_state.get("config"), "frozen_source": frozen_source}
            atomic.write_json(Path(ckpt_dir) / tag / META, meta)
            atomic.write_text(Path(ckpt_dir) / "latest", tag)
        except Exception as e:  # noqa: BLE001 (every rank raises it below, together)
            error = e
    _agree_saved(Path(ckpt_dir) / tag, error)
    if dist.get_rank() == 0:
        prune(Path(ckpt_dir), keep_last, best_tag, tag)
    dist.barrier()
    return tag


class _GuardedWrites:
    """DeepSpeed's checkpoint engine with its writes held: a failed write is kept, not raised, and the rank
    writes nothing more of this save, so it still joins the collectives left in ``save_checkpoint`` (its final
    barrier) and the ranks then fail together. DeepSpeed 0.19 writes every file of a save through
    ``engine.checkpoint_engine.save(state_dict, path)``; everything else is passed through."""

    def __init__(self, inner: Any):
        self.inner, self.error = inner, None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def save(self, state_dict: Any, path: str) -> Any:
        if self.error is not None:
            return None
        try:
            return self.inner.save(state_dict, path)
        except Exception as e:  # noqa: BLE001 (raised by save(), on every rank, once DeepSpeed is done)
            self.error = e
            return None


def _agree_saved(tag_dir: Path, error: BaseException | None) -> None:
    """Every rank learns whether any rank's part of the save failed; if one did, all raise the same error and
    rank 0 removes the partial tag (after every rank has stopped writing)."""
    full = error is not None and atomic.is_no_space(error, tag_dir)  # read before anything is removed
    said = (str(error) or type(error).__name__) if error is not None else None
    reports: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(reports, (full, said))
    failed = [(r, f, m) for r, (f, m) in enumerate(reports) if m is not None]
    if not failed:
        return
    rank, _, message = next((x for x in failed if x[1]), failed[0])
    # this rank's own error, or the failed rank's message (the rank is named in `what`)
    cause = error if error is not None and rank == dist.get_rank() else RuntimeError(message)
    what = f"checkpoint {tag_dir.name} (rank {rank})"
    raised = atomic.NoSpaceLeft(tag_dir, what, cause) if any(f for _, f, _ in failed) else RuntimeError(
        f"saving {what} to {tag_dir} failed: {message}; the partial tag is removed, latest is unchanged")
    if dist.get_rank() == 0:
        shutil.rmtree(tag_dir, ignore_errors=True)
    dist.barrier()
    raise raised from cause


def mark_best(ckpt_dir: Path, tag: str) -> None:
    if dist.get_rank() == 0:
        atomic.write_text(Path(ckpt_dir) / "best", tag)


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Tags whose save finished (their metadata is written after every rank's shards)."""
    if not Path(ckpt_dir).is_dir():
        return []
    return sorted(p.parent.name for p in Path(ckpt_dir).glob(f"step*/{META}"))


def prune(ckpt_dir: Path, keep_last: int, best_tag: str | None, current: str | None = None) -> None:
    """Keep ``current`` (the save just made), the ``keep_last`` newest tags up to it, and the best one.

    Tags newer than ``current`` belong to a timeline the run rewound past (it resumed from an earlier save):
    they are removed, so the run's own saves are never the ones pruned.
    """
    tags = [t for t in complete_tags(ckpt_dir) if current is None or t <= current]
    keep = set(tags[-keep_last:]) | {best_tag, read_pointer(ckpt_dir, "best"), current}
    for tag in complete_tags(ckpt_dir):
        if tag not in keep:
            shutil.rmtree(ckpt_dir / tag, ignore_errors=True)
            shutil.rmtree(ckpt_dir / f"{tag}_universal", ignore_errors=True)
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
        if tag and not (ckpt_dir / tag / META).is_file():
            raise FileNotFoundError(f"{ckpt_dir / 'latest'} names {tag}, which is not a finished checkpoint")
        return (ckpt_dir, tag) if tag else None
    path = Path(resume)
    if path.is_dir() and (path / META).is_file():
        return path.parent, check_tag(path.name, f"resume={resume}")
    if TAG.fullmatch(resume) and (ckpt_dir / resume / META).is_file():
        return ckpt_dir, resume
    raise FileNotFoundError(f"resume={resume}: no finished checkpoint there (nor under {ckpt_dir})")


def check_fresh(output_dir: Path) -> None:
    """A new run (resume="") refuses a folder that holds an earlier run, instead of mixing or pruning its saves."""
    out = Path(output_dir)
    earlier = [p.name for p in (out / "checkpoints", out / "metrics.jsonl", out / "final.json")
               if (p.is_dir() and any(p.glob("step*"))) or p.is_file()]
    if earlier:
        raise ValueError(f"output_dir={out} holds an earlier run ({', '.join(earlier)}): continue it with "
                         "resume=auto, or start the new run in another output_dir (or move that one aside)")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(saved: dict[str, Any], now: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(harmless, breaking) differences between a checkpoint's config and the resuming run's, as lines."""
    a, b = (_flat(json.loads(json.dumps(c))) for c in (saved, now))  # tuples and lists compare as JSON does
    harmless, breaking = [], []
    for key in sorted(a.keys() | b.keys()):
        if a.get(key) == b.get(key):
            continue
        line = f"{key}: {a.get(key, '(unset)')!r} → {b.get(key, '(unset)')!r}"
        ok = any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE_CHANGES)
        (harmless if ok else breaking).append(line)
    return harmless, breaking


def saved_config(ckpt_dir: Path, tag: str) -> dict[str, Any] | None:
    return json.loads((Path(ckpt_dir) / tag / META).read_text()).get("config")


def frozen_source(ckpt_dir: Path, tag: str) -> str | None:
    """Where a tag's frozen parameters are (its model's pretrained source), if the save left them out."""
    path = Path(ckpt_dir) / tag.removesuffix("_universal") / META
    return json.loads(path.read_text()).get("frozen_source") if path.is_file() else None


def saved_world_size(ckpt_dir: Path, tag: str) -> int:
    return json.loads((Path(ckpt_dir) / tag / META).read_text())["world_size"]


def to_universal(ckpt_dir: Path, tag: str) -> Path:
    """Convert a tag to DeepSpeed's universal format (once; rank 0), for loading on another world size.

    Rank 0 converts while the others wait at a broadcast; a failed conversion reaches every rank as the same
    error, with DeepSpeed's own message, instead of a traceback on rank 0 and a collective timeout elsewhere.
    """
    out = Path(ckpt_dir) / f"{tag}_universal"
    outcome: list[Any] = [None]
    if dist.get_rank() == 0 and not (out / META).is_file():
        cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
               str(Path(ckpt_dir) / tag), "--output_folder", str(out), "--inject_missing_state"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            shutil.copy(Path(ckpt_dir) / tag / META, out / META)
        else:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            outcome[0] = "\n".join(lines[-15:]) or f"exit code {proc.returncode}"
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        raise RuntimeError(f"converting {Path(ckpt_dir) / tag} to a universal checkpoint (to resume on another "
                           f"world size) failed; DeepSpeed said:\n{outcome[0]}")
    return out
