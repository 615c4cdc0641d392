"""Dialog feature shards read back: decoded and checked, collated into batches, and the moments the fusion
stage standardises with (the writer is :mod:`m2fdist.format.features`).

One sample per dialog, keyed like its utterances' dialog: ``.json`` (dialog, utterance keys, labels),
``.text.npy`` [k, D_T], ``.audio.npy`` [k, D_A], ``.visual.npy`` [k, D_V] and ``.labels.npy`` [k]. Arrays
are ``.npy`` read with ``allow_pickle=False``: feature shards are as untrusted as any other shard.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m2fdist.common.modalities import MODALITIES
from m2fdist.data.collate import IGNORE_INDEX
from m2fdist.data.decode import ShardDecodeError, load_json_member
from m2fdist.data.stream import shard_units
from m2fdist.format.index import load_index
from m2fdist.format.source import ShardSource


def load_npy(data: bytes, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:  # raised for object arrays, i.e. pickles
        raise ShardDecodeError(f"{where}: not a plain .npy array ({e})") from e


def decode_features(raw: dict[str, Any], num_labels: int | None = None) -> dict[str, Any]:
    """A dialog feature sample → labels [k] and [k, D] arrays, shapes and labels checked.

    Labels must be integers in ``range(num_labels)`` (when given) and every array one row per label:
    a bad feature shard is an error naming it here, not a crash in collation.
    """
    where = f"{raw.get('__url__', '?')}:{raw.get('__key__', '?')}"
    missing = {"json", "labels.npy"} - raw.keys()
    if missing:
        raise ShardDecodeError(f"{where}: feature sample lacks {sorted(missing)}")
    meta = load_json_member(raw, where)
    labels = load_npy(raw["labels.npy"], where)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ShardDecodeError(f"{where}: labels.npy must be a 1-D integer array, not {labels.dtype} {labels.shape}")
    if num_labels and len(labels) and (labels.min() < 0 or labels.max() >= num_labels):
        raise ShardDecodeError(f"{where}: a label id outside 0..{num_labels - 1} in labels.npy")
    out = {"key": raw.get("__key__"), "meta": meta, "labels": labels}
    for m in MODALITIES:
        name = m.name
        if m.feature in raw:
            x = load_npy(raw[m.feature], where)
            if x.ndim != 2 or x.shape[0] != len(labels) or x.dtype.kind != "f":
                raise ShardDecodeError(f"{where}: {name}.npy must be float [{len(labels)}, D], not {x.dtype} "
                                       f"{list(x.shape)}")
            if not np.isfinite(x).all():  # one NaN would poison the standardisation of its dimension for all
                rows = sorted({int(r) for r in np.argwhere(~np.isfinite(x))[:, 0]})
                raise ShardDecodeError(f"{where}: {name}.npy holds non-finite values (utterances {rows[:5]})")
            out[name] = x.astype(np.float32)
    return out


def collate_features(dialogs: list[dict[str, Any]]) -> dict[str, Any]:
    """[B, K, D] per modality, labels [B, K] padded with -100, mask [B, K]."""
    b = len(dialogs)
    k = max(len(d["labels"]) for d in dialogs)
    counts = torch.tensor([len(d["labels"]) for d in dialogs])
    mask = torch.arange(k)[None, :] < counts[:, None]
    labels = torch.full((b, k), IGNORE_INDEX, dtype=torch.long)
    labels[mask] = torch.from_numpy(np.concatenate([d["labels"] for d in dialogs])).long()
    valid = torch.tensor([d.get("valid", True) for d in dialogs], dtype=torch.bool)
    labels[~valid] = IGNORE_INDEX
    out: dict[str, Any] = {"keys": [d["meta"].get("keys", []) for d in dialogs],
                           "dialog": [d["meta"].get("dialog") for d in dialogs],
                           "labels": labels, "mask": mask, "valid": valid}
    for name in (m.name for m in MODALITIES):
        if name in dialogs[0]:
            x = torch.zeros((b, k, dialogs[0][name].shape[1]), dtype=torch.float32)
            x[mask] = torch.from_numpy(np.concatenate([d[name] for d in dialogs]))
            out[name] = x
    return out


def feature_moments(shards: str | Path, split: str, names: tuple[str, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Mean and std per dimension of each named modality over every utterance of ``split``.

    The fusion model standardises its inputs with the training split's statistics (DialogConfig.standardize).
    Every rank reads the same shards in the same order in float64, so all ranks get identical values.
    """
    source = ShardSource(shards)
    index = load_index(source)
    if split not in index["splits"]:
        raise ValueError(f"{shards}: no {split} split to take the feature statistics from")
    num_labels = len(index.get("label_names", []))
    sums: dict[str, np.ndarray] = {}
    squares: dict[str, np.ndarray] = {}
    count = 0
    raws = (raw for shard in index["splits"][split]["shards"] for raw in shard_units(source, shard, dialogs=False))
    for raw in raws:
        sample = decode_features(raw, num_labels)
        for name in names:
            if name not in sample:
                raise ShardDecodeError(f"{raw.get('__url__')}:{sample['key']}: no {name} features")
            x = sample[name].astype(np.float64)
            sums[name] = sums.get(name, 0.0) + x.sum(0)
            squares[name] = squares.get(name, 0.0) + (x * x).sum(0)
        count += len(sample["labels"])
    if count == 0:
        raise ValueError(f"{shards}: the {split} split has no utterances to take the feature statistics from")
    out = {}
    for name in names:
        mean = sums[name] / count
        out[name] = (mean, np.sqrt(np.maximum(squares[name] / count - mean * mean, 0.0)))
    return out
