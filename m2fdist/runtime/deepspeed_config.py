"""The DeepSpeed JSON a launch runs with: a file of configs/ds/ with batch sizes, clipping and precision filled
in from the run config.

Only the HF Trainer fills ``"auto"`` values, so they are refused; optimiser and scheduler come from ``train.*``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

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


def zero_stage(ds: dict[str, Any]) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def partition_at_load(ds: dict[str, Any]) -> Any | None:
    """Under ZeRO-3: an object that, while it lives, makes transformers build every model partitioned
    (``deepspeed.zero.Init``), whether read from a checkpoint folder (``from_pretrained``) or built from a config
    with random weights (``from_config``): each rank holds about 1/world of the base from the moment it exists,
    instead of the whole model until ``deepspeed.initialize`` partitions it (an 8B model in bf16: 16 GB per rank).
    None under ZeRO 0-2.

    Keep it for the run: transformers (loading, embedding resizes) and peft (adapter set-up reads the shapes of
    the partitioned weights it wraps) look it up through a weak reference, and forget it once it is gone.
    """
    if zero_stage(ds) != 3:
        return None
    # here, not at the top: transformers costs seconds; audio, visual, fusion ranks never need it
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(ds)


def cast_unpartitioned(model: Any, ds: dict[str, Any]) -> int:
    """Cast the floating-point parameters that are not yet ZeRO-3's (built outside ``zero.Init``: the
    classification head, peft's adapters) to the run's dtype; returns how many it cast.

    ``deepspeed.initialize`` casts a model it partitions itself, but of one that is partly partitioned already it
    partitions the rest without casting them (DeepSpeed 0.19, ``_convert_to_zero_parameters``): a bf16 run then
    fails in its first forward (bf16 activations into an fp32 head: "mat1 and mat2 must have the same dtype").
    """
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision_of(ds), torch.float32)
    cast = 0
    for p in model.parameters():
        if not hasattr(p, "ds_id") and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
            cast += 1
    return cast


# Under ZeRO-3, at most this fraction of the model's parameters may stay gathered beyond the module computing
# (prefetched ahead, or kept for reuse), each of the two limits below, unless the DeepSpeed JSON sets them.
GATHERED_SHARE = 64
GATHER_LIMITS = ("stage3_max_live_parameters", "stage3_max_reuse_distance")


def cap_stage3_gathers(ds: dict[str, Any], n_params: int, share: int = GATHERED_SHARE) -> dict[str, int]:
    """Bound what ZeRO-3 keeps gathered to 1/``share`` of the model each, where the JSON is silent; returns the
    limits it set.

    DeepSpeed (0.19) defaults both limits to 1e9 parameters: a gathered weight is not freed while it is used
    again within 1e9 parameters' worth of modules, and prefetch may gather up to 1e9 ahead. Any model under
    about 1B parameters therefore ends up wholly gathered on every rank after its first step, and an 8B one
    holds 2 GB (bf16) on top of its partition: ZeRO-3 partitioned the weights but not the peak. Tied to the
    model's size, the bound is the same share at every scale: 1/64 each keeps a rank at about 1/world of the
    model plus 1/32. Measured on Qwen3-8B's shapes (LoRA r16, bf16, 2 CPU ranks, bench/zero3_memory.py): peak
    0.603 of the model over a tiny rank at 1/32, 0.581 at 1/64, and the step faster (110 s against 128 s, as
    less memory is touched). At 8B, 1/64 is 119 M parameters, about 0.6 of a decoder layer, so after an
    activation-checkpointed recompute a layer's first projections are gathered again for their backward: more
    traffic on a GPU, where memory is rarely this tight (not measured there); set the two keys in the JSON to
    trade back.
    """
    if zero_stage(ds) != 3:
        return {}
    zero = ds.setdefault("zero_optimization", {})
    limit = max(1, n_params // share)
    set_now = {key: limit for key in GATHER_LIMITS if key not in zero}
    zero.update(set_now)
    return set_now
