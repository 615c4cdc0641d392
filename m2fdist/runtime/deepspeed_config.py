"""The DeepSpeed JSON a launch runs with: a file of configs/ds/ with batch sizes, clipping and precision filled
in from the run config.

Only the HF Trainer fills ``"auto"`` values, so they are refused; optimiser and scheduler come from ``train.*``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from m2fdist.config.errors import ConfigError
from m2fdist.config.schema import RunConfig
from m2fdist.runtime.precision import Precision, device_native_bf16
from m2fdist.runtime.precision import resolve as resolve_precision


def device_kind() -> str:
    """'cuda', 'cpu', ...: DeepSpeed's accelerator, which DS_ACCELERATOR=cpu forces to the CPU."""
    # here, not at the top: deepspeed's import costs seconds; checks and --help never pay it
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name()


def deepspeed_config(cfg: RunConfig, world_size: int, device: str | None = None,
                     native_bf16: bool | None = None) -> tuple[dict[str, Any], Precision]:
    """The DeepSpeed JSON with batch sizes, clipping and precision filled in from the run config, and the
    precision chosen (``native_bf16`` overrides the hardware probe, for tests).

    Under ``accelerate launch`` the JSON named by its config (ACCELERATE_DEEPSPEED_CONFIG_FILE) is used,
    so both launchers read the same files in configs/ds/.
    """
    path = Path(os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or cfg.deepspeed)
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config {path} not found")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not JSON ({e})") from None
    if '"auto"' in json.dumps(ds):
        raise ConfigError(f"{path}: \"auto\" values are filled in only by the HF Trainer; give numbers")
    micro, accum = cfg.data.batch_size, cfg.train.grad_accum
    if cfg.train.global_batch:
        if cfg.train.global_batch % (micro * world_size):
            raise ConfigError(
                f"train.global_batch={cfg.train.global_batch} is not a multiple of data.batch_size={micro} × "
                f"world size {world_size}"
            )
        accum = cfg.train.global_batch // (micro * world_size)
    ds["train_micro_batch_size_per_gpu"] = micro
    ds["gradient_accumulation_steps"] = accum
    ds["train_batch_size"] = micro * accum * world_size
    ds["gradient_clipping"] = cfg.train.clip
    ds.setdefault("steps_per_print", 10**9)
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise ConfigError(f"{path}: remove \"{key}\": m2fdist builds AdamW with per-group learning rates "
                              "and its warmup + decay schedule from train.* itself")
    device = device or device_kind()
    native = device_native_bf16(device) if native_bf16 is None and cfg.precision == "auto" else bool(native_bf16)
    chosen = resolve_precision(cfg.precision, precision_of(ds), device, native)
    if chosen.dtype == "fp16" and device == "cpu":
        raise ConfigError("fp16 needs a GPU; on CPU use precision=auto, bf16 or fp32")
    fp16 = {**ds.get("fp16", {}), "enabled": chosen.dtype == "fp16"}
    for key, value in {"loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000, "hysteresis": 2,
                       "min_loss_scale": 1}.items():
        fp16.setdefault(key, value)
    ds["fp16"] = fp16
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": chosen.dtype == "bf16"}
    if cfg.train.nonfinite == "skip":
        _check_skip(ds, path, chosen.dtype)
    return ds, chosen


def _check_skip(ds: dict[str, Any], path: Path, dtype: str) -> None:
    """``train.nonfinite=skip`` relies on DeepSpeed's optimizer skipping a step whose gradient norm is not
    finite (deepspeed 0.19: ZeRO 1-3 at any precision, the bf16 and fp16 optimizers). ZeRO-0 in fp32 hands
    the step to torch's AdamW, which applies NaN, and bf16 with ``check_grad_overflow`` off applies it too."""
    if ds.get("zero_optimization", {}).get("stage", 0) == 0 and dtype == "fp32":
        raise ConfigError(f"train.nonfinite=skip with {path} (ZeRO stage 0) in fp32: DeepSpeed skips no step "
                          "there; use a ZeRO 1-3 config (configs/ds/zero2_fp32.json) or bf16")
    if dtype == "bf16" and ds["bf16"].get("check_grad_overflow") is False:
        raise ConfigError(f"train.nonfinite=skip, but {path} sets bf16.check_grad_overflow=false: DeepSpeed would "
                          "apply a non-finite step")


def precision_of(ds: dict[str, Any]) -> str:
    if ds.get("bf16", {}).get("enabled"):
        return "bf16"
    return "fp16" if ds.get("fp16", {}).get("enabled") else "fp32"
