"""Throughput in every training log: samples/s, tokens/s (text), achieved TFLOP/s per device, and MFU.

Without these nobody can tell whether a run uses its GPUs (torchtitan logs tokens/s, TFLOP/s and MFU;
Lightning's ThroughputMonitor and Composer's SpeedMonitor do too). A step's FLOPs come from a formula that knows
what is trained, over the forward's FLOPs as torch's ``FlopCounterMode`` counts them on the run's first
micro-batch (the matmuls, convolutions and attention the model really does; in eval mode, so no dropout draws,
no running statistic and no optimizer state change: exact resume is untouched). The backward computes an input
gradient only where the input needs one (a frozen encoder under a trained head costs its forward alone), and a
weight gradient only for a trained weight: frozen and LoRA base weights cost no weight-gradient FLOPs, so
"3 × the forward" would overstate a LoRA run by about half. A text batch's cost grows
with its tokens, so text runs carry the FLOPs per real token to other batches; the other stages' per sample.

MFU is the achieved FLOP/s per device over a peak: ``train.peak_tflops`` when given; else the dense bf16/fp16
peak of the accelerators in :data:`PEAK_TFLOPS`; on a CPU, a short matmul probe measured at start, said as such
(``peak_source``), since CPUs have no datasheet figure that holds across cores, threads and instruction sets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
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
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Peak:
    """The FLOP/s an MFU is taken against, and where that figure came from (a log reader must know which)."""

    tflops: float
    source: str


def peak_tflops(device: torch.device, dtype: str) -> float | None:
    """The device's dense datasheet peak for the run's dtype, or None (CPU, fp32, an accelerator not in the table)."""
    if device.type != "cuda" or dtype not in HALF:
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS if key in name), None)


def cpu_matmul_probe(dtype: str, size: int = 1024, seconds: float = 0.3) -> float:
    """TFLOP/s of square matmuls in ``dtype`` on this process's CPU threads, measured for about ``seconds``.

    Run by each rank at start, beside the other ranks, so it measures the share of the machine a rank really
    has; the first product is a warm-up (oneDNN picks its kernel there).
    """
    a = torch.randn(size, size).to(DTYPES.get(dtype, torch.float32))
    b = torch.randn(size, size).to(a.dtype)
    torch.mm(a, b)
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or n < 2:
        torch.mm(a, b)
        n += 1
    return 2.0 * size**3 * n / elapsed / 1e12


def run_peak(device: torch.device, dtype: str, given: float | None) -> Peak | None:
    """The peak a run's MFU uses: the config's, the table's, or (CPU only) the measured probe."""
    if given:
        return Peak(float(given), "train.peak_tflops")
    table = peak_tflops(device, dtype)
    if table:
        return Peak(table, f"datasheet dense {dtype} peak of {torch.cuda.get_device_name(device)}")
    if device.type == "cpu":
        return Peak(cpu_matmul_probe(dtype), f"measured {dtype} matmul probe on this rank's CPU threads")
    return None


def peak_record(peak: Peak | None) -> dict[str, Any]:
    """How a run's config and final.json name the peak its MFU uses (None: no MFU is logged)."""
    return {"mfu_peak_tflops": peak.tflops if peak else None, "mfu_peak_source": peak.source if peak else None}


def summary(speed: dict[str, float]) -> str:
    """The progress bar's short form of :func:`rates`: samples/s, tokens/s, TFLOP/s, MFU where there are."""
    parts = [f"{speed['samples_per_s']:.1f} samples/s"]
    if "tokens_per_s" in speed:
        parts.append(f"{speed['tokens_per_s']:.0f} tok/s")
    parts.append(f"{speed['tflops_per_device']:.3g} TFLOP/s")
    if "mfu" in speed:
        parts.append(f"MFU {100 * speed['mfu']:.1f}%")
    return ", ".join(parts)


def units(batch: dict[str, Any]) -> tuple[int, int]:
    """(samples, real tokens) of a micro-batch; tokens are 0 for batches that hold none (audio, visual, fusion)."""
    samples = len(batch["labels"])
    mask = batch.get("attention_mask")
    return samples, int(mask.sum()) if isinstance(mask, torch.Tensor) else 0


class _Ledger:
    """Forward FLOPs split by what the backward must do with them, filled by hooks on the modules that own
    weights while the counter runs a forward with autograd recording (so each tensor says whether it needs a
    gradient, as in the training step)."""

    def __init__(self, counter: FlopCounterMode) -> None:
        self.counter = counter
        self.start: float | None = None  # forward FLOPs done before the first output that needs a gradient
        self.weights_after = 0.0  # FLOPs of weight-owning leaves from there on
        self.backward = 0.0  # the backward's FLOPs in those leaves: input and weight gradients where needed
        self._open: dict[int, float] = {}

    def pre(self, module: torch.nn.Module, _args: Any) -> None:
        self._open[id(module)] = float(self.counter.get_total_flops())

    def post(self, module: torch.nn.Module, args: Any, out: Any) -> None:
        began = self._open.pop(id(module), 0.0)
        spent = float(self.counter.get_total_flops()) - began
        if self.start is None and _needs_grad(out):
            self.start = began
        if self.start is None:
            return
        self.weights_after += spent
        trained = any(p.requires_grad for p in module.parameters(recurse=False))
        self.backward += spent * (_needs_grad(args) + trained)  # a weight product's dX and dW cost its forward

    def step_flops(self, forward: float) -> float:
        """Forward + backward. Products of two activations after the first trained weight (attention's) need
        gradients for both operands, twice their forward; a frozen start before it needs none."""
        if self.start is None:
            return forward  # nothing is trained: no backward at all
        others = max(0.0, forward - self.start - self.weights_after)
        return forward + self.backward + 2.0 * others


def _needs_grad(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.requires_grad
    if isinstance(value, (tuple, list)):
        return any(_needs_grad(v) for v in value)
    if isinstance(value, dict):
        return any(_needs_grad(v) for v in value.values())
    return any(_needs_grad(v) for v in vars(value).values()) if hasattr(value, "__dataclass_fields__") else False


def train_step_flops(forward: Callable[[], Any], module: torch.nn.Module) -> float:
    """FLOPs of one training step (forward and backward) on the batch ``forward`` runs the loss on.

    The forward runs here once, in eval mode (no dropout draw, no running statistic), under the counter, with
    autograd recording but no backward run (the graph is dropped); hooks on the leaf modules that own weights
    see which inputs and weights need gradients. The module's mode is restored.
    """
    was_training = module.training
    module.eval()
    leaves = [m for m in module.modules()
              if any(True for _ in m.parameters(recurse=False)) and not any(True for _ in m.children())]
    with FlopCounterMode(display=False) as counter:
        ledger = _Ledger(counter)
        hooks = [h for m in leaves for h in (m.register_forward_pre_hook(ledger.pre),
                                              m.register_forward_hook(ledger.post))]
        try:
            with torch.enable_grad():
                forward()
        finally:
            for h in hooks:
                h.remove()
            module.train(was_training)
    return ledger.step_flops(float(counter.get_total_flops()))


def train_flops_per_unit(forward: Callable[[], Any], module: torch.nn.Module, batch: dict[str, Any]) -> float:
    """FLOPs a training step spends per real token (text) or per sample (other stages), measured on ``batch``."""
    samples, tokens = units(batch)
    return train_step_flops(forward, module) / max(1, tokens or samples)


def rates(flops_per_unit: float, samples: float, tokens: float, seconds: float, world: int,
          peak: Peak | None) -> dict[str, float]:
    """What a log line shows for ``samples`` and ``tokens`` (summed over every rank) trained in ``seconds``."""
    seconds = max(seconds, 1e-9)
    out = {"samples_per_s": samples / seconds}
    if tokens:
        out["tokens_per_s"] = tokens / seconds
    tflops = flops_per_unit * (tokens or samples) / seconds / world / 1e12  # per device
    out["tflops_per_device"] = tflops
    if peak:
        out["mfu"] = tflops / peak.tflops
    return out
