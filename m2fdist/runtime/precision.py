"""Which floating-point precision a run trains in: ``precision=auto`` follows what the hardware computes natively.

Why this exists: on a CPU without native bf16 (AVX2-only x86, e.g. AMD Zen 2/3 and most Intel desktop chips)
PyTorch and oneDNN emulate bf16, and a bf16 ResNet18 forward ran ~30× slower than fp32 (batch 8, one thread:
12.6 s against 0.40 s). So bf16 is chosen only where the device has it in silicon: CUDA devices that support
it, x86 CPUs with AVX512-BF16 or AMX, Arm CPUs with the BF16 extension. fp16 is used only where it was asked
for (``precision=fp16``, or an fp16 DeepSpeed JSON under ``auto``) and the device is a GPU; an fp32 JSON
stays fp32.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from m2fdist.config.schema import PRECISIONS

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below which oneDNN does not issue bf16 instructions even on a CPU that
# has them: a capped process emulates bf16 as a machine without it would, so ``auto`` must treat it as such.
_NO_BF16_ISAS = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


@dataclass(frozen=True)
class Precision:
    """The chosen precision and, for the log and final.json, why."""
    dtype: str  # bf16, fp16 or fp32
    reason: str


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (x86 ``flags``, Arm ``Features``); empty where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_native_bf16(flags: set[str] | None = None, onednn_isa: str | None = None) -> bool:
    """True where this CPU computes bf16 matrix products in hardware and oneDNN is allowed to use it."""
    flags = cpu_flags() if flags is None else flags
    isa = (os.environ.get("ONEDNN_MAX_CPU_ISA", "") if onednn_isa is None else onednn_isa).strip().upper()
    if isa in _NO_BF16_ISAS:
        return False
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "bf16" in flags
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def device_native_bf16(device: str) -> bool:
    if device == "cpu":
        return cpu_native_bf16()
    if device == "cuda":

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    # here, not at the top: deepspeed's import costs seconds; checks and --help never pay it
    from deepspeed.accelerator import get_accelerator

    return bool(get_accelerator().is_bf16_supported())


def resolve(requested: str, json_dtype: str, device: str, native_bf16: bool) -> Precision:
    """The precision to train in.

    ``requested`` is the run config's ``precision``; ``json_dtype`` what the DeepSpeed JSON enables (bf16, fp16
    or fp32), read as the lowest precision the user accepts. ``auto`` keeps an fp32 JSON in fp32 and an fp16
    JSON on a GPU in fp16; otherwise it takes bf16 where the device computes it natively and fp32 where bf16
    would only be emulated. ``json`` takes the JSON as it is; explicit values are honoured (fp16 on a CPU is an
    error the caller reports, in :func:`m2fdist.runtime.deepspeed_config.deepspeed_config`).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {requested!r}")
    if requested == "json":
        return Precision(json_dtype, f"as the DeepSpeed JSON says ({json_dtype})")
    if requested != "auto":
        return Precision(requested, f"precision={requested} asked for")
    if json_dtype == "fp32":
        return Precision("fp32", "auto: the DeepSpeed JSON asks for fp32")
    if json_dtype == "fp16" and device != "cpu":
        return Precision("fp16", f"auto: the DeepSpeed JSON asks for fp16 on {device}")
    if native_bf16:
        return Precision("bf16", f"auto: {device} computes bf16 natively")
    what = "no AVX512-BF16/AMX (x86) or BF16 (Arm) in this CPU" if device == "cpu" else f"{device} without bf16"
    return Precision("fp32", f"auto: {what}, so fp32 (emulated bf16 runs far slower)")
