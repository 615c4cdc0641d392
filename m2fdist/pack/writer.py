"""Encode one planned shard and write it, tar first, then its stats file as the completion marker.

A shard's tar is written under a temporary name and renamed when complete; the stats file is written
(atomically) after that. A killed pack therefore leaves at most a stray ``.tmp`` (a rerun removes those of
dead writers); a rerun treats a shard as done only when both its tar and stats exist and agree on the size.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m2fdist.common import atomic
from m2fdist.common.media import Encoded, MediaError, encode_utterance
from m2fdist.common.modalities import PACKED as MODALITIES  # noqa: F401  (the --modalities choices, re-exported)
from m2fdist.format.tarmembers import add_sample, open_tar
from m2fdist.pack.plan import ShardPlan
from m2fdist.raw.base import Skip, Utterance


@dataclass(frozen=True)
class PackOptions:
    max_side: int = 320
    max_seconds: float = 60.0
    long_clips: str = "trim"  # or "skip"
    # "text": json-only samples from the annotations alone; no clip is needed, probed or decoded.
    modalities: str = "text,audio,visual"

    @property
    def media(self) -> bool:
        return self.modalities != "text"

    def to_json(self) -> dict[str, Any]:
        return {"max_side": self.max_side, "max_seconds": self.max_seconds, "long_clips": self.long_clips,
                "modalities": self.modalities}


def stats_path(out: Path, name: str) -> Path:
    return out / f"{name}.stats.json"


def is_finished(out: Path, name: str) -> bool:
    stats, tar = stats_path(out, name), out / f"{name}.tar"
    if not (stats.is_file() and tar.is_file()):
        return False
    try:
        return json.loads(stats.read_text())["bytes"] == tar.stat().st_size
    except (ValueError, KeyError):
        return False


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def _sample_json(u: Utterance, root: Path, enc: Encoded | None) -> dict[str, Any]:
    """The sample's json; ``enc`` None for a text-only sample."""
    meta = u.meta()
    src = meta["source"]
    meta["source"] = (
        {k: _relative(v, root) for k, v in src.items()} if isinstance(src, dict) else _relative(src, root)
    )
    meta["key"] = u.key
    if enc is not None:
        meta["trimmed"] = enc.trimmed
        if enc.source_duration is not None:
            meta["source_duration"] = round(enc.source_duration, 3)
    return meta


def _too_long(duration: float | None, max_seconds: float) -> str:
    if duration is None:
        return f"clip runs past --max-seconds {max_seconds:g} (its container declares no duration)"
    return f"clip is {duration:.1f}s long, past --max-seconds {max_seconds:g}"


def _count(u: Utterance, keys: list[str], labels: Counter[str], dialogs: list[str]) -> None:
    """Record a written sample in the shard's stats."""
    keys.append(u.key)
    labels[u.label] += 1
    if not dialogs or dialogs[-1] != u.dialog:
        dialogs.append(u.dialog)


def write_shard(plan: ShardPlan, out: Path, root: Path, options: PackOptions,
                tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """Encode every utterance of ``plan`` and write ``out/{name}.tar``; return (and save) its stats.

    Media failures (corrupt clip, no audio, clip past ``max_seconds`` under ``long_clips=skip``) become
    skips in the stats; the rest of the shard is still written. Text-only options write the json alone.
    """
    t0 = time.time()
    tar_path = out / f"{plan.name}.tar"
    tmp_path = atomic.temp_path_for(tar_path)
    skipped: list[dict] = []
    trimmed: list[dict] = []
    keys: list[str] = []
    labels: Counter[str] = Counter()
    dialogs: list[str] = []
    with (atomic.guard_space(tar_path, f"shard {plan.name}", partial=[tmp_path]),
          tempfile.TemporaryDirectory(prefix="m2fdist-pack-") as work, open(tmp_path, "wb") as f):
        tar = open_tar(f)
        mp4, wav = Path(work) / "clip.mp4", Path(work) / "clip.wav"
        for u in plan.utterances:
            if not options.media:
                meta = _sample_json(u, root, None)
                add_sample(tar, u.key, {"json": json.dumps(meta, ensure_ascii=False).encode("utf-8")})
                _count(u, keys, labels, dialogs)
                if tick:
                    tick(1)
                continue
            try:
                enc = encode_utterance(
                    Path(u.video), mp4, wav, max_side=options.max_side, max_seconds=options.max_seconds,
                    start=u.cut_start, end=u.cut_end, audio=Path(u.audio) if u.audio else None,
                )
                if enc.trimmed and options.long_clips == "skip":
                    raise MediaError(
                        _too_long(enc.source_duration, options.max_seconds)
                    )
            except MediaError as e:
                skipped.append(Skip(u.dataset, u.split, e.reason, u.dialog, u.utt, _relative(u.video, root)).to_json())
                if tick:
                    tick(1)
                continue
            meta = _sample_json(u, root, enc)
            if enc.trimmed:
                trimmed.append({"key": u.key, "source": meta["source"], "source_duration": meta.get("source_duration")})
            add_sample(tar, u.key, {
                "json": json.dumps(meta, ensure_ascii=False).encode("utf-8"),
                "mp4": mp4.read_bytes(),
                "wav": wav.read_bytes(),
            })
            _count(u, keys, labels, dialogs)
            if tick:
                tick(1)
        tar.close()
    os.replace(tmp_path, tar_path)
    stats = {
        "shard": tar_path.name, "split": plan.split, "count": len(keys), "bytes": tar_path.stat().st_size,
        "est_bytes": plan.est_bytes, "dialogs": len(dialogs), "labels": dict(sorted(labels.items())),
        "keys": keys, "skipped": skipped, "trimmed": trimmed, "seconds": round(time.time() - t0, 2),
    }
    atomic.write_json(stats_path(out, plan.name), stats)
    return stats
