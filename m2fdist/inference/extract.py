"""Extraction: run the trained text, audio and visual extractors over the utterance shards and write dialog
feature shards for the fusion stage (``m2fdist extract``, :mod:`m2fdist.cli.extract`).

Its config is an :class:`~m2fdist.config.schema.ExtractConfig` (``--help`` lists the keys); the frame count comes
from the visual export, what that model was trained with.

Dialogs are spread over ranks (each exactly once) and read in chunks of at most ``extract.chunk_utterances``
utterances (:mod:`m2fdist.data.chunks`), so memory does not grow with a dialog's length; a dialog's feature
rows are put together as its chunks come and written when its last utterance has been seen. Face boxes come
from a face set where one covers a chunk (``visual.faces``, ``m2fdist faces``), else from MTCNN. Each rank
writes one tar per split, then its stats file as the completion marker, so a rerun skips what is done
(with the same extractors: the stats record their identities, :mod:`m2fdist.format.lineage`).
Rank 0 writes ``index.json`` once every rank has finished.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from m2fdist.common import atomic
from m2fdist.common.modalities import NAMES as MODALITIES
from m2fdist.common.modalities import members_for
from m2fdist.common.progress import bar as progress_bar
from m2fdist.config.checks import read_policy
from m2fdist.config.errors import ConfigError
from m2fdist.config.schema import ExtractConfig
from m2fdist.data.chunks import chunk_loader
from m2fdist.faces.faceset import FaceSet, FaceSettings, face_boxes, open_faces
from m2fdist.format.features import FeatureShardWriter
from m2fdist.format.index import load_index, write_index
from m2fdist.format.lineage import MADE_FROM, export_id
from m2fdist.inference.load import load_exported
from m2fdist.models.device import to_device
from m2fdist.models.text_config import INPUT_KEYS
from m2fdist.models.text_inputs import TokenizeBatch
from m2fdist.raw.base import make_key
from m2fdist.runtime.devices import resolve_device


def load_extractors(cfg: ExtractConfig, device: str) -> dict[str, torch.nn.Module]:
    models = {}
    for name in MODALITIES:
        path = getattr(cfg.extract, name)
        if not path:
            continue
        run_cfg, model = load_exported(Path(path), device)
        if run_cfg.stage != name:
            raise ConfigError(f"extract.{name}={path} is an export of the {run_cfg.stage} stage")
        models[name] = model
    if not models:
        raise ConfigError("extract.text / extract.audio / extract.visual: give at least one exported model")
    return models


@torch.no_grad()
def chunk_features(models: dict[str, torch.nn.Module], batch: dict[str, Any],
                   faces: FaceSet | None = None) -> dict[str, np.ndarray]:
    """Per-utterance features [n, D] of a chunk of utterances (collated by m2fdist.data.chunks)."""
    out = {}
    if "text" in models:
        tokens = {k: batch[k] for k in INPUT_KEYS if k in batch}
        out["text"] = models["text"].sentence_vectors(batch["meta"], tokens or None)
    if "audio" in models:
        m = models["audio"]
        out["audio"] = m(to_device(batch["audio"], m), batch["audio_len"])
    if "visual" in models:
        m = models["visual"]
        frames, hw = to_device(batch["frames"], m), batch["frame_hw"]
        out["visual"] = m(frames, hw, face_boxes(m, faces, batch["keys"], frames, hw) if m.face is not None else None)
    return {name: x.float().cpu().numpy() for name, x in out.items()}


def extract_dialogs(models: dict[str, torch.nn.Module], loader: Iterable[dict[str, Any]], faces: FaceSet | None = None
                    ) -> Iterator[tuple[Any, list[str], np.ndarray, dict[str, np.ndarray], int]]:
    """(dialog, keys, labels, features [k, D] by modality, largest chunk so far) for each complete dialog.

    Chunks from different loader workers interleave, so several dialogs may be open at once (one per
    worker at most); each is yielded as soon as its last utterance's chunk has been processed.
    """
    open_: dict[Any, dict[str, Any]] = {}
    largest = 0
    for batch in loader:
        largest = max(largest, len(batch["keys"]))
        feats = chunk_features(models, batch, faces)
        for i, (dialog, last) in enumerate(zip(batch["dialog"], batch["last"], strict=True)):
            acc = open_.setdefault(dialog, {"keys": [], "labels": [], "rows": []})
            acc["keys"].append(batch["keys"][i])
            acc["labels"].append(int(batch["labels"][i]))
            acc["rows"].append({n: v[i] for n, v in feats.items()})
            if last:
                done = open_.pop(dialog)
                stacked = {n: np.stack([r[n] for r in done["rows"]]) for n in feats}
                yield dialog, done["keys"], np.asarray(done["labels"], dtype=np.int64), stacked, largest
    if open_:
        raise RuntimeError(f"dialogs {sorted(map(str, open_))[:3]} ended without their last utterance")


def shard_name(split: str, rank: int, world: int) -> str:
    return f"{split}-r{rank:03d}of{world:03d}"


def run(cfg: ExtractConfig) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    device = resolve_device("auto")
    models = load_extractors(cfg, device)
    out = Path(cfg.extract.out)
    out.mkdir(parents=True, exist_ok=True)
    members = members_for([n for n in MODALITIES if n in models and n != "text"])
    source = load_index(cfg.data.shards)  # a folder or an allowed URL
    d = cfg.data
    size = (d.frame_width, d.frame_height) if d.frame_width and d.frame_height else None
    faces = None
    if "visual" in models and models["visual"].face is not None:
        settings = FaceSettings(d.num_frames, models["visual"].config.min_face_size)
        faces = open_faces(cfg.visual.faces, d.shards, settings, verbose=rank == 0)
    # the workers tokenise, as the text stage's do: the main process only runs the models
    tokenise = TokenizeBatch(models["text"].batcher) if "text" in models else None
    made_from = extractor_ids(cfg)
    for split in cfg.extract.splits:
        if split not in source["splits"]:
            continue
        name = shard_name(split, rank, world)
        if _done(out / f"{name}.stats.json", made_from):
            continue
        loader = chunk_loader(d.shards, split, cfg.extract.chunk_utterances, rank, world, d.num_workers,
                              d.num_frames, size, members, read_policy(cfg), tokenise)
        writer = FeatureShardWriter(out / f"{name}.tar")
        labels: Counter[str] = Counter()
        utterances = largest = 0
        dims: dict[str, int] = {}
        bar = progress_bar(None, f"extract {split}", "dialog", enabled=rank == 0)  # rank 0's share: unknown
        for dialog, keys, y, feats, seen in extract_dialogs(models, loader, faces):
            largest = seen
            meta = {"dataset": cfg.dataset, "split": split, "dialog": dialog, "keys": keys}
            writer.write(make_key(cfg.dataset, split, "dialog", str(dialog)), meta, {**feats, "labels": y})
            labels.update(cfg.label_names[int(v)] for v in y)
            utterances += len(keys)
            dims = {n: int(v.shape[1]) for n, v in feats.items()}
            bar.update()
        bar.close()
        writer.close()
        stats = {"shard": f"{name}.tar", "split": split, "count": writer.count, "dialogs": writer.count,
                 "utterances": utterances, "labels": dict(labels), "dims": dims, "largest_chunk": largest,
                 MADE_FROM: made_from}
        atomic.write_json(out / f"{name}.stats.json", stats)
    dist.barrier()
    if rank == 0:
        write_features_index(out, cfg, world, made_from)
    dist.barrier()


def extractor_ids(cfg: ExtractConfig) -> dict[str, str]:
    """The identity of each export extraction reads (:func:`~m2fdist.format.lineage.export_id`), by modality."""
    return {n: export_id(Path(getattr(cfg.extract, n))) for n in MODALITIES if getattr(cfg.extract, n)}


def _done(stats: Path, made_from: dict[str, str]) -> bool:
    """A rank's split finished earlier with these same extractors (a split done with others is done again:
    one features folder never mixes two text models)."""
    return stats.is_file() and json.loads(stats.read_text()).get(MADE_FROM) == made_from


def write_features_index(out: Path, cfg: ExtractConfig, world: int, made_from: dict[str, str] | None = None) -> None:
    """The features' index.json, from every rank's per-split stats files, with the identities of the exports
    they were extracted by (``made_from``: what the pipeline compares to re-extract after a stage is retrained)."""
    made_from = extractor_ids(cfg) if made_from is None else made_from
    names = cfg.label_names
    splits: dict[str, Any] = {}
    dims: dict[str, int] = {}
    for split in cfg.extract.splits:
        stats = [json.loads(p.read_text()) for p in sorted(out.glob(f"{split}-r*of{world:03d}.stats.json"))]
        if not stats:
            continue
        labels = Counter()
        for s in stats:
            labels.update(s["labels"])
            dims.update(s["dims"])
        splits[split] = {
            "shards": [{"url": s["shard"], "samples": s["count"], "dialogs": s["count"]} for s in stats if s["count"]],
            "samples": sum(s["count"] for s in stats), "dialogs": sum(s["count"] for s in stats),
            "utterances": sum(s["utterances"] for s in stats), "labels": {n: labels.get(n, 0) for n in names},
        }
    write_index(out, "features", cfg.dataset, names, splits, dims=dims, source=cfg.data.shards,
                extractors={n: getattr(cfg.extract, n) for n in MODALITIES}, made_from=made_from)
