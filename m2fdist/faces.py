"""``m2fdist faces SHARDS``: find the faces of every packed utterance once, instead of in every batch.

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
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from m2fdist import atomic
from m2fdist.data.decode import NUM_FRAMES, ShardDecodeError, decode_sample
from m2fdist.data.handoff import forkserver
from m2fdist.data.source import ShardError, ShardSource
from m2fdist.data.stream import read_samples
from m2fdist.pack.index import load_index

FORMAT = 1
FOLDER = "faces"


@dataclass(frozen=True)
class FaceSettings:
    """What stored boxes depend on: the frames sampled and the smallest face MTCNN looks for."""

    num_frames: int = NUM_FRAMES
    min_face_size: int = 20


def shard_stem(url: str) -> str:
    name = Path(url).name
    return name[: -len(".tar")] if name.endswith(".tar") else name


def _paths(folder: Path, stem: str) -> tuple[Path, Path, Path]:
    return folder / f"{stem}.faces.json", folder / f"{stem}.faces.npy", folder / f"{stem}.stats.json"


# -- reading ---------------------------------------------------------------------------------------------


class FaceSet:
    """Stored boxes of the finished shards of a face set, by sample key."""

    def __init__(self, folder: Path, settings: FaceSettings, shards: str | Path | None = None,
                 strict: bool = False):
        """Load every finished shard of ``folder`` made with ``settings``.

        With ``shards`` (a folder or URL), each shard of their index is checked against the face set: one
        that is missing, unfinished, made with other settings or from another version of the shard is an error when
        ``strict`` (a face-set path the user named) and is left to MTCNN otherwise.
        """
        self.folder, self.settings = Path(folder), settings
        self.entries: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # key → (counts [T], boxes [n, 5])
        self.ignored: list[str] = []
        if shards is None:
            wanted = [(p.name[: -len(".stats.json")], None, p.name) for p in sorted(self.folder.glob("*.stats.json"))]
        else:
            wanted = [(shard_stem(sh["url"]), sh.get("bytes"), f"{split} shard {sh['url']}")
                      for split, entry in load_index(str(shards))["splits"].items() for sh in entry["shards"]]
        for stem, shard_bytes, what in wanted:
            why = self._load(stem, shard_bytes)
            if why and strict:
                raise ValueError(f"face set {folder}: {what}: {why} (run `m2fdist faces SHARDS --out {folder}`)")
            if why:
                self.ignored.append(f"{what}: {why}")

    def _load(self, stem: str, shard_bytes: int | None) -> str | None:
        """Why the shard's boxes cannot be used, or None once they are loaded."""
        meta_path, npy_path, stats_path = _paths(self.folder, stem)
        if not stats_path.is_file():
            return "no finished face pass"
        try:
            meta = json.loads(meta_path.read_text())
            boxes = np.load(npy_path, allow_pickle=False)
        except (OSError, ValueError) as e:
            return f"unreadable ({e})"
        settings = FaceSettings(**meta.get("settings", {}))
        if meta.get("format") != FORMAT or settings != self.settings:
            return f"made with {asdict(settings)}, not {asdict(self.settings)}"
        if shard_bytes is not None and meta.get("shard_bytes") not in (None, shard_bytes):
            return "made from another version of the shard (its size changed)"
        counts = np.asarray(meta["counts"], dtype=np.int64).reshape(len(meta["keys"]), self.settings.num_frames)
        if boxes.dtype != np.float32 or boxes.shape != (int(counts.sum()), 5):
            return f"boxes array {boxes.dtype} {boxes.shape} does not match its face counts"
        starts = np.concatenate([[0], np.cumsum(counts.sum(axis=1))])
        for i, key in enumerate(meta["keys"]):
            self.entries[key] = (counts[i], boxes[starts[i] : starts[i + 1]])
        return None

    def __len__(self) -> int:
        return len(self.entries)

    def boxes(self, keys: list[str], frame_hw: Tensor, min_prob: float,
              device: torch.device | str = "cpu") -> list[list[Tensor]] | None:
        """[B][T] absolute boxes [k, 4] with probability >= ``min_prob`` in each utterance's real frame area,
        or None when any key has no stored boxes (the caller then runs MTCNN on the batch)."""
        if any(k not in self.entries for k in keys):
            return None
        out = []
        for key, (h, w) in zip(keys, frame_hw.tolist(), strict=True):
            counts, rows = self.entries[key]
            scale = torch.tensor([w, h, w, h], dtype=torch.float32)
            frames, start = [], 0
            for c in counts.tolist():
                r = torch.from_numpy(rows[start : start + c])
                start += c
                frames.append((r[r[:, 4] >= min_prob, :4] * scale).to(device))
            out.append(frames)
        return out


def open_faces(mode: str, shards: str | Path, settings: FaceSettings, verbose: bool = True) -> FaceSet | None:
    """The face set ``visual.faces`` names: auto (SHARDS/faces when usable), mtcnn (none), or a folder.

    Shards at a URL have no local ``faces`` folder to find: auto runs MTCNN there and says so; a named
    folder (the pass's ``--out``) is checked against the URL's index like any other.
    """
    if mode == "mtcnn":
        return None
    strict = mode != "auto"
    if not strict and ShardSource(shards).scheme not in ("", "file"):
        if verbose:
            print(f"visual: shards at {shards}: MTCNN runs on every batch (a face set made with "
                  "`m2fdist faces SHARDS --out DIR` is used when visual.faces=DIR names it)", file=sys.stderr)
        return None
    folder = Path(shards) / FOLDER if mode == "auto" else Path(mode)
    if not folder.is_dir():
        if strict:
            raise FileNotFoundError(f"visual.faces={mode}: no such face-set folder")
        if verbose:
            print(f"visual: no face set at {folder}: MTCNN runs on every batch", file=sys.stderr)
        return None
    faces = FaceSet(folder, settings, shards, strict)
    if verbose:
        left = f"; {len(faces.ignored)} shards left to MTCNN ({faces.ignored[0]}, ...)" if faces.ignored else ""
        print(f"visual: stored face boxes for {len(faces)} utterances from {folder}{left}", file=sys.stderr)
    return faces if len(faces) else None


def face_boxes(model, faces: FaceSet | None, keys: list[str], frames: Tensor, frame_hw: Tensor) -> list[list[Tensor]]:
    """Stored boxes for these utterances when the face set has them all, else MTCNN on the frames."""
    stored = faces.boxes(keys, frame_hw, model.config.min_face_prob, frames.device) if faces else None
    return stored if stored is not None else model.detect(frames, frame_hw)


# -- the pass ----------------------------------------------------------------------------------------------


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


def detect_clips(detector, clips: list[Tensor], device: torch.device) -> list[list[tuple[Tensor, Tensor]]]:
    """MTCNN over clips [T, H, W, 3], batched by frame size (never padded: MTCNN's image pyramid depends on
    the image size, so padding would make a clip's boxes depend on its batch)."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, c in enumerate(clips):
        by_size.setdefault((int(c.shape[1]), int(c.shape[2])), []).append(i)
    out: list[list[tuple[Tensor, Tensor]]] = [[] for _ in clips]
    for (h, w), idx in by_size.items():
        frames = torch.cat([torch.as_tensor(clips[i]) for i in idx]).to(device)
        found = detector.scored(frames, torch.tensor([[h, w]] * len(frames)))
        t = len(found) // len(idx)
        for j, i in enumerate(idx):
            out[i] = [(b.cpu(), p.cpu()) for b, p in found[j * t : (j + 1) * t]]
    return out


def _write_shard(folder: Path, stem: str, shard: dict[str, Any], settings: FaceSettings, done: dict[str, Any],
                 seconds: float) -> dict[str, Any]:
    """The shard's boxes, then its stats file last: the marker a rerun trusts."""
    meta_path, npy_path, stats_path = _paths(folder, stem)
    rows, counts, hw = [], [], []
    for (h, w), frames in zip(done["hw"], done["found"], strict=True):
        hw.append([h, w])
        counts.append([len(b) for b, _ in frames])
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        rows += [torch.cat([b / scale, p[:, None]], dim=1) for b, p in frames]
    boxes = torch.cat(rows).numpy().astype(np.float32) if rows else np.zeros((0, 5), np.float32)
    tmp = npy_path.with_name(npy_path.name + ".tmp")
    with tmp.open("wb") as f:
        np.save(f, boxes, allow_pickle=False)
    os.replace(tmp, npy_path)
    atomic.write_json(meta_path, {"format": FORMAT, "shard": shard["url"], "shard_bytes": shard.get("bytes"),
                                  "settings": asdict(settings), "keys": done["keys"], "frame_hw": hw,
                                  "counts": counts})
    stats = {"shard": shard["url"], "utterances": len(done["keys"]), "faces": int(len(boxes)),
             "frames_with_face": int(sum(c > 0 for row in counts for c in row)),
             "skipped": done["skipped"], "seconds": round(seconds, 3), "settings": asdict(settings)}
    atomic.write_json(stats_path, stats)
    return stats


def find_faces(shards: str | Path, out: Path | None = None, settings: FaceSettings = FaceSettings(),
               splits: list[str] | None = None, chunk: int = 8, workers: int = 2, device: str = "auto",
               part: tuple[int, int] = (0, 1), overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run the face pass over the shards' unfinished shards (of part i of n); returns totals.

    ``shards`` is a folder or any location ``data.shards`` takes (http(s)://, s3://, gs://); the face set
    is written to ``out``, which a remote location needs (default SHARDS/faces for a folder).
    """
    from m2fdist.models.visual import FaceDetector
    from m2fdist.progress import bar as progress_bar

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
            stats_file = _paths(folder, stem)[2]
            if stats_file.is_file() and not overwrite:
                made = json.loads(stats_file.read_text()).get("settings")
                if made != asdict(settings):
                    raise ValueError(f"{folder}: {stem} was made with {made}, not {asdict(settings)}; "
                                     "use --overwrite to replace the face set")
                continue
            stats_file.unlink(missing_ok=True)  # an overwritten shard is unfinished until rewritten
            todo[stem] = shard
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    detector = FaceDetector(min_prob=0.0, min_face_size=settings.min_face_size)
    data = _ShardFrames(source, [(s, sh["url"]) for s, sh in todo.items()], settings.num_frames, chunk)
    workers = min(workers, len(todo))
    # Workers from a forkserver, as the stages' loaders: never fork a process that runs threads.
    loader = DataLoader(data, batch_size=None, num_workers=workers,
                        multiprocessing_context=forkserver(workers, ["m2fdist.faces"]))
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
        acc["found"] += detect_clips(detector, item["clips"], dev)
        bar.update(len(item["keys"]))
    bar.close()
    totals["seconds"] = round(time.perf_counter() - start, 2)
    totals["device"] = str(dev)
    return totals


def _part(value: str) -> tuple[int, int]:
    import argparse

    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--part takes i/n, got {value!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--part {value}: need 0 <= i < n")
    return i, n


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="m2fdist faces", description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("shards", help="packed shards (with index.json): a folder, or an http(s)://, s3:// or gs:// "
                   "location as data.shards takes")
    p.add_argument("--out", type=Path, default=None, help="face-set folder (default SHARDS/faces, which "
                   "visual.faces=auto finds; needed for shards at a URL, then visual.faces=OUT)")
    p.add_argument("--num-frames", type=int, default=NUM_FRAMES, help="frames per utterance: the stages' "
                   "data.num_frames (15, the paper's)")
    p.add_argument("--min-face-size", type=int, default=20, help="MTCNN's smallest face: visual.min_face_size")
    p.add_argument("--splits", default="", help="comma-separated splits (default: all)")
    p.add_argument("--chunk", type=int, default=8, help="utterances per MTCNN batch (x num-frames frames)")
    p.add_argument("--workers", type=int, default=2, help="loader workers decoding frames")
    p.add_argument("--device", default="auto", help="auto (cuda when there is one), cpu, cuda, cuda:1, ...")
    p.add_argument("--part", type=_part, default=(0, 1), help="shard j goes to part j mod n (one per GPU)")
    p.add_argument("--overwrite", action="store_true", help="redo finished shards (other settings)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.num_frames < 1 or args.chunk < 1 or args.workers < 0 or args.min_face_size < 1:
        p.error("--num-frames, --chunk and --min-face-size must be >= 1, --workers >= 0")
    try:
        totals = find_faces(args.shards, args.out, FaceSettings(args.num_frames, args.min_face_size),
                            [s for s in args.splits.split(",") if s] or None, args.chunk, args.workers,
                            args.device, args.part, args.overwrite, not args.no_progress)
    except (FileNotFoundError, ValueError, KeyError, ShardError) as e:
        print(f"m2fdist faces: error: {e}", file=sys.stderr)
        return 2
    rate = totals["utterances"] / totals["seconds"] if totals["seconds"] else 0.0
    print(f"faces: {totals['shards']} shards, {totals['utterances']} utterances ({rate:.1f}/s on "
          f"{totals['device']}), {totals['faces']} faces, {totals['skipped']} undecodable samples recorded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
