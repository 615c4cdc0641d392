"""Batch decoded samples: pad frames, waveforms and dialogs to the longest, and say what is real.

Masks travel with every padded tensor so models never mistake padding for data: ``audio_mask`` over
samples, ``mask`` over a dialog's utterances, ``valid`` over batch rows (evaluation pads a rank's last
batch with rows that must not count).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

IGNORE_INDEX = -100


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised batch tensor; in a DataLoader worker it is made in shared memory, so handing the
    batch to the main process costs no second copy of the frames (as torch's own default_collate does)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    elem = torch.empty(0, dtype=dtype)
    return elem.new(elem._typed_storage()._new_shared(math.prod(shape), device="cpu")).resize_(*shape)


def _pad_frames(clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """[T,H,W,3] clips of possibly different H, W → [B,T,Hmax,Wmax,3] uint8 and their true (H, W)."""
    t = clips[0].shape[0]
    h = max(c.shape[1] for c in clips)
    w = max(c.shape[2] for c in clips)
    out = _empty((len(clips), t, h, w, 3), torch.uint8)
    for i, c in enumerate(clips):
        if c.shape[1:3] != (h, w):
            out[i].zero_()  # padding is zero; only smaller clips need it
        out[i, :, : c.shape[1], : c.shape[2]] = torch.from_numpy(c)
    return out, torch.tensor([[c.shape[1], c.shape[2]] for c in clips], dtype=torch.long)


def _pad_audio(waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(a) for a in waves], dtype=torch.long)
    out = _empty((len(waves), int(lengths.max()) if len(waves) else 0), torch.float32)
    for i, a in enumerate(waves):
        out[i, : len(a)] = torch.from_numpy(a)
        out[i, len(a):] = 0
    mask = torch.arange(out.shape[1])[None, :] < lengths[:, None]
    return out, lengths, mask


def collate_utterances(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch utterances; ``frames`` / ``audio`` are present when they were decoded."""
    metas = [s["meta"] for s in samples]
    media: dict[str, Any] = {}
    if "frames" in samples[0]:
        media["frames"], media["frame_hw"] = _pad_frames([s["frames"] for s in samples])
    if "audio" in samples[0]:
        media["audio"], media["audio_len"], media["audio_mask"] = _pad_audio([s["audio"] for s in samples])
    return {
        "keys": [s["key"] for s in samples],
        **media,
        "labels": torch.tensor([m["label_id"] for m in metas], dtype=torch.long),
        "valid": torch.tensor([s.get("valid", True) for s in samples], dtype=torch.bool),
        "text": [m["text"] for m in metas],
        "speaker": [m.get("speaker", "") for m in metas],
        "context_prev": [[c["text"] for c in m.get("context_prev", [])] for m in metas],
        "context_next": [[c["text"] for c in m.get("context_next", [])] for m in metas],
        "meta": metas,
    }


def collate_dialogs(dialogs: list[dict[str, Any]]) -> dict[str, Any]:
    """Dialogs of k_i utterances → tensors [B, K, ...] with K = max k_i and ``mask`` [B, K]."""
    b = len(dialogs)
    k = max(len(d["utterances"]) for d in dialogs)
    flat = [u for d in dialogs for u in d["utterances"]]
    inner = collate_utterances(flat)
    counts = [len(d["utterances"]) for d in dialogs]
    mask = torch.arange(k)[None, :] < torch.tensor(counts)[:, None]

    def spread(x: torch.Tensor, fill: float = 0) -> torch.Tensor:
        """[sum k_i, ...] → [B, K, ...], padded with ``fill``."""
        out = torch.full((b, k, *x.shape[1:]), fill, dtype=x.dtype)
        out[mask] = x
        return out

    out: dict[str, Any] = {}
    if "frames" in inner:
        out["frames"], out["frame_hw"] = spread(inner["frames"]), spread(inner["frame_hw"])
    if "audio" in inner:
        out["audio"], out["audio_len"] = spread(inner["audio"]), spread(inner["audio_len"])
        out["audio_mask"] = torch.arange(out["audio"].shape[2])[None, None, :] < out["audio_len"][..., None]
    labels = spread(inner["labels"], IGNORE_INDEX)
    valid = torch.tensor([d.get("valid", True) for d in dialogs], dtype=torch.bool)
    labels[~valid] = IGNORE_INDEX
    groups = [[u["key"] for u in d["utterances"]] for d in dialogs]
    return {
        "keys": groups,
        "dialog": [d["dialog"] for d in dialogs],
        **out,
        "labels": labels,
        "mask": mask,
        "valid": valid,
        "text": [[u["meta"]["text"] for u in d["utterances"]] for d in dialogs],
        "speaker": [[u["meta"].get("speaker", "") for u in d["utterances"]] for d in dialogs],
        "meta": [[u["meta"] for u in d["utterances"]] for d in dialogs],
    }
