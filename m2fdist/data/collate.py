"""Batch decoded samples: pad frames, waveforms and dialogs to the longest, and say what is real.

Masks travel with every padded tensor so models never mistake padding for data: ``audio_mask`` over
samples, ``mask`` over a dialog's utterances, ``valid`` over batch rows (evaluation pads a rank's last
batch with rows that must not count).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

IGNORE_INDEX = -100


def _pad_frames(clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """[T,H,W,3] clips of possibly different H, W → [B,T,Hmax,Wmax,3] uint8 and their true (H, W)."""
    t = clips[0].shape[0]
    h = max(c.shape[1] for c in clips)
    w = max(c.shape[2] for c in clips)
    out = torch.zeros((len(clips), t, h, w, 3), dtype=torch.uint8)
    for i, c in enumerate(clips):
        out[i, :, : c.shape[1], : c.shape[2]] = torch.from_numpy(c)
    return out, torch.tensor([[c.shape[1], c.shape[2]] for c in clips], dtype=torch.long)


def _pad_audio(waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(a) for a in waves], dtype=torch.long)
    out = torch.zeros((len(waves), int(lengths.max()) if len(waves) else 0), dtype=torch.float32)
    for i, a in enumerate(waves):
        out[i, : len(a)] = torch.from_numpy(a)
    mask = torch.arange(out.shape[1])[None, :] < lengths[:, None]
    return out, lengths, mask


def collate_utterances(samples: list[dict[str, Any]]) -> dict[str, Any]:
    frames, frame_hw = _pad_frames([s["frames"] for s in samples])
    audio, audio_len, audio_mask = _pad_audio([s["audio"] for s in samples])
    metas = [s["meta"] for s in samples]
    return {
        "keys": [s["key"] for s in samples],
        "frames": frames,
        "frame_hw": frame_hw,
        "audio": audio,
        "audio_len": audio_len,
        "audio_mask": audio_mask,
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
    frames, audio = inner["frames"], inner["audio"]
    out_frames = torch.zeros((b, k, *frames.shape[1:]), dtype=frames.dtype)
    out_audio = torch.zeros((b, k, audio.shape[1]), dtype=audio.dtype)
    audio_len = torch.zeros((b, k), dtype=torch.long)
    frame_hw = torch.zeros((b, k, 2), dtype=torch.long)
    labels = torch.full((b, k), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((b, k), dtype=torch.bool)
    pos = 0
    for i, d in enumerate(dialogs):
        n = len(d["utterances"])
        out_frames[i, :n] = frames[pos : pos + n]
        out_audio[i, :n] = audio[pos : pos + n]
        audio_len[i, :n] = inner["audio_len"][pos : pos + n]
        frame_hw[i, :n] = inner["frame_hw"][pos : pos + n]
        labels[i, :n] = inner["labels"][pos : pos + n]
        mask[i, :n] = True
        pos += n
    valid = torch.tensor([d.get("valid", True) for d in dialogs], dtype=torch.bool)
    labels[~valid] = IGNORE_INDEX
    groups = [[u["key"] for u in d["utterances"]] for d in dialogs]
    return {
        "keys": groups,
        "dialog": [d["dialog"] for d in dialogs],
        "frames": out_frames,
        "frame_hw": frame_hw,
        "audio": out_audio,
        "audio_len": audio_len,
        "audio_mask": torch.arange(out_audio.shape[2])[None, None, :] < audio_len[..., None],
        "labels": labels,
        "mask": mask,
        "valid": valid,
        "text": [[u["meta"]["text"] for u in d["utterances"]] for d in dialogs],
        "speaker": [[u["meta"].get("speaker", "") for u in d["utterances"]] for d in dialogs],
    }
