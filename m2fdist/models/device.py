"""Where a model's weights are, and the tensors it is given moved there: one helper for every caller."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's (first) parameters; a DeepSpeed engine answers for the module it wraps."""
    return next(model.parameters()).device


def dtype_of(model: nn.Module) -> torch.dtype:
    """The dtype of the model's (first) parameters: what DeepSpeed's bf16 / fp16 cast them to."""
    return next(model.parameters()).dtype


def to_device(x: Tensor, model: nn.Module) -> Tensor:
    """``x`` on the model's device."""
    return x.to(device_of(model))
