"""Which device a process computes on: the one answer to ``--device auto`` and to "no GPU here" for every command
(prediction, extraction, the face pass)."""

from __future__ import annotations

import torch


def resolve_device(device: str = "auto") -> str:
    """``auto`` is cuda when a GPU is visible, else cpu; asking for cuda without one is an error, not a crash."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU is visible (use cpu or auto)")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be cpu, cuda, cuda:N or auto, not {device!r}")
    return device
