"""Face sets: the boxes ``m2fdist faces`` stored beside the shards, read back by key (and MTCNN where none cover).

    SHARDS/faces/{shard}.faces.json   keys, each frame's real size and face count, the pass's settings
    SHARDS/faces/{shard}.faces.npy    float32 [faces, 5]: x1, y1, x2, y2 relative to the frame, probability
    SHARDS/faces/{shard}.stats.json   written last (atomically): the shard is finished

JSON and npy only (``allow_pickle=False``): a face set is as untrusted as the shards. Boxes are relative, so
they follow a resize (``data.frame_width``); they hold for the pass's ``num_frames`` and ``min_face_size`` only: a
face set made with others is ignored (``visual.faces=auto``) or refused (a face-set path).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from m2fdist.data.decode import NUM_FRAMES
from m2fdist.format.index import load_index
from m2fdist.format.source import ShardSource
from m2fdist.models.visual import VisualExtractor

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


def shard_paths(folder: Path, stem: str) -> tuple[Path, Path, Path]:
    """A face-set shard's three files: boxes' metadata, boxes, and the stats file written last."""
    return folder / f"{stem}.faces.json", folder / f"{stem}.faces.npy", folder / f"{stem}.stats.json"


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
        meta_path, npy_path, stats_path = shard_paths(self.folder, stem)
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


def face_boxes(model: VisualExtractor, faces: FaceSet | None, keys: list[str], frames: Tensor,
               frame_hw: Tensor) -> list[list[Tensor]]:
    """Stored boxes for these utterances when the face set has them all, else MTCNN on the frames."""
    stored = faces.boxes(keys, frame_hw, model.config.min_face_prob, frames.device) if faces else None
    return stored if stored is not None else model.detect(frames, frame_hw)
