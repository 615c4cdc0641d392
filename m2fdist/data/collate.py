"""Batch decoded samples: pad frames, waveforms and dialogs to the longest, and say what is real.

Masks travel with every padded tensor so models never mistake padding for data: ``audio_mask`` over
samples, ``mask`` over a dialog's utterances, ``valid`` over batch rows (evaluation pads a rank's last
batch with rows that must not count).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from m2fdist.data.handoff import batch_tensors

IGNORE_INDEX = -100


def _frames_shape(clips: list[np.ndarray]) -> tuple[int, ...]:
    return (len(clips), clips[0].shape[0], max(c.shape[1] for c in clips), max(c.shape[2] for c in clips), 3)


def _pad_frames(clips: list[np.ndarray], out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[T,H,W,3] clips of possibly different H, W → ``out`` [B,T,Hmax,Wmax,3] uint8 and their true (H, W)."""
    h, w = out.shape[2:4]
    for i, c in enumerate(clips):
        if c.shape[1:3] != (h, w):
            out[i].zero_()  # padding is zero; only smaller clips need it
        out[i, :, : c.shape[1], : c.shape[2]] = torch.from_numpy(c)
    return out, torch.tensor([[c.shape[1], c.shape[2]] for c in clips], dtype=torch.long)


def _pad_audio(waves: list[np.ndarray], out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(a) for a in waves], dtype=torch.long)
    for i, a in enumerate(waves):
        out[i, : len(a)] = torch.from_numpy(a)
        out[i, len(a):] = 0
    mask = torch.arange(out.shape[1])[None, :] < lengths[:, None]
    return out, lengths, mask


def _media_tensors(samples: list[dict[str, Any]], private: bool) -> dict[str, torch.Tensor]:
    """Uninitialised ``frames`` / ``audio`` batch tensors for what was decoded, in one hand-off slot when
    this is a loader worker (m2fdist.data.handoff) unless ``private``."""
    specs = {}
    if "frames" in samples[0]:
        specs["frames"] = (_frames_shape([s["frames"] for s in samples]), torch.uint8)
    if "audio" in samples[0]:
        specs["audio"] = ((len(samples), max(len(s["audio"]) for s in samples)), torch.float32)
    if private:
        return {k: torch.empty(shape, dtype=dtype) for k, (shape, dtype) in specs.items()}
    return dict(zip(specs, batch_tensors(list(specs.values())), strict=True))


def collate_utterances(samples: list[dict[str, Any]], private: bool = False) -> dict[str, Any]:
    """Batch utterances; ``frames`` / ``audio`` are present when they were decoded. ``private`` keeps them
    out of shared memory (a batch that is only a step towards another)."""
    metas = [s["meta"] for s in samples]
    media: dict[str, Any] = {}
    out = _media_tensors(samples, private)
    if "frames" in out:
        media["frames"], media["frame_hw"] = _pad_frames([s["frames"] for s in samples], out["frames"])
    if "audio" in out:
        media["audio"], media["audio_len"], media["audio_mask"] = _pad_audio([s["audio"] for s in samples],
                                                                              out["audio"])
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
    inner = collate_utterances(flat, private=True)
    counts = [len(d["utterances"]) for d in dialogs]
    mask = torch.arange(k)[None, :] < torch.tensor(counts)[:, None]

    def spread(x: torch.Tensor, fill: float = 0, out: torch.Tensor | None = None) -> torch.Tensor:
        """[sum k_i, ...] → [B, K, ...], padded with ``fill``."""
        out = torch.empty((b, k, *x.shape[1:]), dtype=x.dtype) if out is None else out
        out.fill_(fill)
        out[mask] = x
        return out

    out: dict[str, Any] = {}
    large = [name for name in ("frames", "audio") if name in inner]
    slots = dict(zip(large, batch_tensors([((b, k, *inner[n].shape[1:]), inner[n].dtype) for n in large]),
                     strict=True))
    if "frames" in inner:
        out["frames"], out["frame_hw"] = spread(inner["frames"], out=slots["frames"]), spread(inner["frame_hw"])
    if "audio" in inner:
        out["audio"], out["audio_len"] = spread(inner["audio"], out=slots["audio"]), spread(inner["audio_len"])
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
