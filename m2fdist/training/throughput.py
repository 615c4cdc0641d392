"""Throughput in every training log: samples/s, tokens/s (text), achieved TFLOP/s per device, and MFU.

Without these nobody can tell whether a run uses its GPUs (torchtitan logs tokens/s, TFLOP/s and MFU;
Lightning's ThroughputMonitor and Composer's SpeedMonitor do too). FLOPs are measured, not guessed from a
formula: the first micro-batch's forward runs once more under torch's ``FlopCounterMode`` (the matmuls,
convolutions and attention the model really does), in eval mode without gradients, so no dropout draws,
no running statistic and no optimizer state change (exact resume is untouched). A training step costs three
forwards (the backward about two), the convention torchtitan and PaLM's MFU use. A text batch's cost grows with
its tokens, so text runs carry the measured FLOPs per real token to other batches; the other stages' per
sample. MFU is the achieved FLOP/s per device over the device's dense bf16/fp16 peak, for the accelerators in
:data:`PEAK_TFLOPS`; on CPUs and unknown devices only TFLOP/s is logged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense bf16 / fp16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, matched against
# torch.cuda.get_device_name() in this order (so "H100 PCIe" is found before "H100").
PEAK_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("H800", 989.4), ("GH200", 989.4),
               ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.1), ("L40", 181.0),
               ("A10G", 70.0), ("A10", 125.0), ("L4", 121.0), ("V100", 125.0), ("MI300X", 1307.4),
               ("MI250X", 383.0))
HALF = ("bf16", "fp16")


def peak_tflops(device: torch.device, dtype: str) -> float | None:
    """The device's dense peak for the run's dtype, or None (CPU, fp32, an accelerator not in the table)."""
    if device.type != "cuda" or dtype not in HALF:
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS if key in name), None)


def units(batch: dict[str, Any]) -> tuple[int, int]:
    """(samples, real tokens) of a micro-batch; tokens are 0 for batches that hold none (audio, visual, fusion)."""
    samples = len(batch["labels"])
    mask = batch.get("attention_mask")
    return samples, int(mask.sum()) if isinstance(mask, torch.Tensor) else 0


def train_flops_per_unit(forward: Callable[[], Any], module: torch.nn.Module, batch: dict[str, Any]) -> float:
    """FLOPs a training step spends per real token (text) or per sample (other stages), measured on ``batch``.

    ``forward`` runs the stage's loss on the batch; it runs here in eval mode without gradients, then the module
    is put back in the mode it was in.
    """
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            forward()
    finally:
        module.train(was_training)
    samples, tokens = units(batch)
    return 3.0 * counter.get_total_flops() / max(1, tokens or samples)


def rates(flops_per_unit: float, samples: float, tokens: float, seconds: float, world: int,
          peak: float | None) -> dict[str, float]:
    """What a log line shows for ``samples`` and ``tokens`` (summed over every rank) trained in ``seconds``."""
    seconds = max(seconds, 1e-9)
    out = {"samples_per_s": samples / seconds}
    if tokens:
        out["tokens_per_s"] = tokens / seconds
    tflops = flops_per_unit * (tokens or samples) / seconds / world / 1e12  # per device
    out["tflops_per_device"] = tflops
    if peak:
        out["mfu"] = tflops / peak
    return out
