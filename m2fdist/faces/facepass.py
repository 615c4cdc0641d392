"""The face pass: find the faces of every packed utterance once, instead of in every batch (``m2fdist faces``).

MTCNN never trains, yet without this pass the visual stage runs it on every frame of every batch of every
epoch, on its critical path. This pass decodes each utterance's sampled frames in loader workers (as the
stages decode them), runs MTCNN batched on the GPU where one exists, and writes a sidecar face set beside
the shards, joined to samples by key:

    SHARDS/faces/{shard}.faces.json   keys, each frame's real size and face count, the pass's settings
    SHARDS/faces/{shard}.faces.npy    float32 [faces, 5]: x1, y1, x2, y2 relative to the frame, probability
    SHARDS/faces/{shard}.stats.json   written last (atomically): the shard is finished

JSON and npy only (``allow_pickle=False``): a face set is as untrusted as the shards. A killed pass resumes:
shards with a stats file are skipped. Every face MTCNN returns is stored with its probability, so
``visual.min_face_prob`` applies when the boxes are used; boxes are relative, so they follow a resize
(``data.frame_width``). They hold for the pass's ``num_frames`` and ``min_face_size`` only: a face set made
with others is ignored (``visual.faces=auto``) or refused (a face-set path).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from m2fdist.common import atomic
from m2fdist.common.progress import bar as progress_bar
from m2fdist.data.decode import ShardDecodeError, decode_sample
from m2fdist.data.handoff import forkserver
from m2fdist.data.stream import read_samples
from m2fdist.faces.faceset import FOLDER, FORMAT, FaceSettings, shard_paths, shard_stem
from m2fdist.format.features import npy_bytes
from m2fdist.format.index import load_index
from m2fdist.format.source import ShardSource
from m2fdist.models.visual import FaceDetector
from m2fdist.runtime.devices import resolve_device


class _ShardFrames(IterableDataset):
    """Decoded frames of whole shards, in chunks; each worker takes every W-th shard, so a shard ends in
    one worker, which then sends a ``done`` item with the samples it could not decode."""
    def __init__(self, source: ShardSource, shards: list[tuple[str, str]], num_frames: int, chunk: int):
        super().__init__()
        self.source, self.shards, self.num_frames, self.chunk = source, shards, num_frames, chunk

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for stem, name in self.shards[worker::workers]:
            keys: list[str] = []
            clips: list[np.ndarray] = []
            skipped: list[dict[str, str]] = []
            for raw in read_samples(self.source, [name]):
                try:
                    sample = decode_sample(raw, self.num_frames, None, ("json", "mp4"))
                except ShardDecodeError as e:
                    skipped.append({"key": raw.get("__key__", "?"), "reason": str(e)})
                    continue
                keys.append(sample["key"])
                clips.append(sample["frames"])
                if len(keys) == self.chunk:
                    yield {"stem": stem, "keys": keys, "clips": clips}
                    keys, clips = [], []
            if keys:
                yield {"stem": stem, "keys": keys, "clips": clips}
            yield {"stem": stem, "done": True, "skipped": skipped}


def _write_shard(folder: Path, stem: str, shard: dict[str, Any], settings: FaceSettings, done: dict[str, Any],
                 seconds: float) -> dict[str, Any]:
    """The shard's boxes, then its stats file last: the marker a rerun trusts."""
    meta_path, npy_path, stats_path = shard_paths(folder, stem)
    rows, counts, hw = [], [], []
    for (h, w), frames in zip(done["hw"], done["found"], strict=True):
        hw.append([h, w])
        counts.append([len(b) for b, _ in frames])
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        rows += [torch.cat([b / scale, p[:, None]], dim=1) for b, p in frames]
    boxes = torch.cat(rows).numpy().astype(np.float32) if rows else np.zeros((0, 5), np.float32)
    atomic.write_bytes(npy_path, npy_bytes(boxes))
    atomic.write_json(meta_path, {"format": FORMAT, "shard": shard["url"], "shard_bytes": shard.get("bytes"),
                                  "settings": asdict(settings), "keys": done["keys"], "frame_hw": hw,
                                  "counts": counts})
    stats = {"shard": shard["url"], "utterances": len(done["keys"]), "faces": int(len(boxes)),
             "frames_with_face": int(sum(c > 0 for row in counts for c in row)),
             "skipped": done["skipped"], "seconds": round(seconds, 3), "settings": asdict(settings)}
    atomic.write_json(stats_path, stats)
    return stats


def find_faces(shards: str | Path, out: Path | None = None, settings: FaceSettings | None = None,
               splits: list[str] | None = None, chunk: int = 8, workers: int = 2, device: str = "auto",
               part: tuple[int, int] = (0, 1), overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run the face pass over the shards' unfinished shards (of part i of n); returns totals.

    ``shards`` is a folder or any location ``data.shards`` takes (http(s)://, s3://, gs://); the face set
    is written to ``out``, which a remote location needs (default SHARDS/faces for a folder).
    """
    settings = settings or FaceSettings()
    source = ShardSource(shards)
    if out is None and source.scheme not in ("", "file"):
        raise ValueError(f"shards at {shards}: give --out, a local folder for the face set (then "
                         "visual.faces=that folder)")
    folder = Path(out) if out else Path(source.base) / FOLDER
    index = load_index(source)
    folder.mkdir(parents=True, exist_ok=True)
    todo: dict[str, dict[str, Any]] = {}
    for split, entry in index["splits"].items():
        if splits and split not in splits:
            continue
        for j, shard in enumerate(entry["shards"]):
            stem = shard_stem(shard["url"])
            if j % part[1] != part[0]:
                continue
            stats_file = shard_paths(folder, stem)[2]
            if stats_file.is_file() and not overwrite:
                made = json.loads(stats_file.read_text()).get("settings")
                if made != asdict(settings):
                    raise ValueError(f"{folder}: {stem} was made with {made}, not {asdict(settings)}; "
                                     "use --overwrite to replace the face set")
                continue
            stats_file.unlink(missing_ok=True)  # an overwritten shard is unfinished until rewritten
            todo[stem] = shard
    dev = torch.device(resolve_device(device))
    detector = FaceDetector(min_prob=0.0, min_face_size=settings.min_face_size)
    data = _ShardFrames(source, [(s, sh["url"]) for s, sh in todo.items()], settings.num_frames, chunk)
    workers = min(workers, len(todo))
    # Workers from a forkserver, as the stages' loaders: never fork a process that runs threads.
    loader = DataLoader(data, batch_size=None, num_workers=workers,
                        multiprocessing_context=forkserver(workers, [__name__]))
    pending: dict[str, dict[str, Any]] = {}
    totals = {"shards": len(todo), "utterances": 0, "faces": 0, "skipped": 0}
    start = time.perf_counter()
    bar = progress_bar(sum(sh["samples"] for sh in todo.values()), "faces", "utt", enabled=progress)
    for item in loader:
        acc = pending.setdefault(item["stem"], {"keys": [], "hw": [], "found": [], "start": time.perf_counter()})
        if item.get("done"):
            acc["skipped"] = item["skipped"]
            stats = _write_shard(folder, item["stem"], todo[item["stem"]], settings, pending.pop(item["stem"]),
                                 time.perf_counter() - acc["start"])
            totals["utterances"] += stats["utterances"]
            totals["faces"] += stats["faces"]
            totals["skipped"] += len(stats["skipped"])
            continue
        acc["keys"] += item["keys"]
        acc["hw"] += [[int(c.shape[1]), int(c.shape[2])] for c in item["clips"]]
        acc["found"] += detector.scored_clips(item["clips"], dev)
        bar.update(len(item["keys"]))
    bar.close()
    totals["seconds"] = round(time.perf_counter() - start, 2)
    totals["device"] = str(dev)
    return totals
