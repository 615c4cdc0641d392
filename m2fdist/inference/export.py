"""Export: one safetensors model (+ its config) from a stage's sharded DeepSpeed checkpoint (``m2fdist export``).

The fp32 weights are rebuilt from the ZeRO shards (any stage, ZeRO-3 included) by DeepSpeed's zero_to_fp32;
the text stage also saves its model's config and tokenizer, so the export loads anywhere without the original
checkpoint or the hub. A text model fine-tuned with LoRA is exported merged (W + B·A·alpha/r folded into the
base weights): the export is a plain model of the base's architecture that loads without peft and runs as
fast as the base. The export is safetensors and JSON only (:mod:`m2fdist.inference.load` reads it back); its
config.json records the sha256 of its weights (``weights_sha256``), its identity for what is made from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from m2fdist.common import atomic
from m2fdist.config.checks import read_policy
from m2fdist.config.load import run_config
from m2fdist.config.schema import RunConfig
from m2fdist.format.exports import CONFIG, PACKING_KEYS, WEIGHTS, public_meta
from m2fdist.format.index import load_index
from m2fdist.format.lineage import WEIGHTS_SHA, file_sha256
from m2fdist.format.source import ShardError, ShardSource
from m2fdist.models.pretrained import build_encoder, load_config, load_tokenizer
from m2fdist.models.text import TextModel, model_kwargs
from m2fdist.training import checkpoint


def fp32_state_dict(ckpt_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """Consolidated fp32 weights of a tag, whatever its ZeRO stage."""
    files = list((Path(ckpt_dir) / tag).glob("*optim_states.pt"))
    if files:
        # here, not at the top: deepspeed's import costs seconds; checks and --help never pay it
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    # ZeRO stage 0 keeps the whole module in the model-states file. Like every DeepSpeed checkpoint it is a
    # pickle: export only checkpoints you trust (the export itself is safetensors).
    states = torch.load(Path(ckpt_dir) / tag / "mp_rank_00_model_states.pt", map_location="cpu",
                        weights_only=False)
    return {k: v.float() for k, v in states["module"].items()}


def packing_of(cfg: RunConfig) -> dict[str, Any] | None:
    """How the clips an audio or visual run read were packed (``m2fdist pack``'s options, from the shards'
    index), so prediction prepares a raw clip the same way; None for other stages or shards not readable now."""
    if cfg.stage not in ("audio", "visual"):
        return None
    try:
        options = load_index(ShardSource(cfg.data.shards, read_policy(cfg))).get("options") or {}
    except (OSError, ValueError, ShardError):
        return None
    return {k: options[k] for k in PACKING_KEYS if k in options} or None


def export(run_dir: Path, tag: str = "best", out: Path | None = None) -> Path:
    """Write ``out`` (default run_dir/export): model.safetensors, config.json and, for text, the encoder.

    The folder is built under a temporary name and renamed into place when complete, so an interrupted
    export leaves the previous export (or none), never a weights file without its config; a full disk is
    :class:`~m2fdist.common.atomic.NoSpaceLeft` naming ``out``, the temporary folder removed.
    """

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if tag in ("best", "latest"):
        name = checkpoint.read_pointer(ckpt_dir, tag) or checkpoint.read_pointer(ckpt_dir, "latest")
        if name is None:
            raise FileNotFoundError(f"no finished checkpoint under {ckpt_dir}")
        tag = name
    checkpoint.check_tag(tag, f"--tag {tag}")
    if not (ckpt_dir / tag / checkpoint.META).is_file():
        raise FileNotFoundError(f"{ckpt_dir / tag}: no finished checkpoint with that tag")
    state = fp32_state_dict(ckpt_dir, tag)
    meta = export_meta(cfg, tag)
    if checkpoint.frozen_source(ckpt_dir, tag) is not None:
        state = with_frozen_base(cfg, state)
    if cfg.stage == "text" and cfg.text.finetune in ("lora", "peft"):
        state = merged_lora_state(cfg, state)
        kind = "LoRA" if cfg.text.finetune == "lora" else str(cfg.text.peft.get("peft_type", "")).upper()
        meta["text_weights"] = f"{kind} merged into the base weights"
    out = Path(out or run_dir / "export")
    tmp = atomic.temp_dir_for(out)
    with atomic.guard_space(out, f"the export of {tag}", partial=[tmp]):  # a full disk: the old export stays
        save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(tmp / WEIGHTS))
        meta[WEIGHTS_SHA] = file_sha256(tmp / WEIGHTS)  # its identity: what products made from it record
        (tmp / CONFIG).write_text(json.dumps(meta, indent=1))
        if cfg.stage == "text":
            load_config(cfg.text.model).save_pretrained(tmp / "text_encoder")
            load_tokenizer(cfg.text.model).save_pretrained(tmp / "text_encoder")
        atomic.publish_dir(tmp, out)
    return out


def export_meta(cfg: RunConfig, tag: str) -> dict[str, object]:
    """An export's ``config.json``: the run config, tag, stage and labels, saying how the model was trained but not
    where (:func:`~m2fdist.format.exports.public_meta`: no local paths, shard URLs, commands or W&B account)."""
    # the label names in output order travel with the weights: a reader needs no table to name the classes
    meta: dict[str, object] = {"run": cfg.to_dict(), "tag": tag, "stage": cfg.stage,
                               "labels": cfg.label_names}
    if packing := packing_of(cfg):
        meta["packing"] = packing  # predict prepares raw clips exactly as these shards were packed
    return public_meta(meta)


def with_frozen_base(cfg: RunConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint that left its frozen base out (LoRA, frozen encoder), completed from ``text.model``.

    Only frozen parameters may be missing: a trained weight absent from the checkpoint is an error, not
    something the base may stand in for.
    """
    if cfg.stage != "text":
        raise ValueError(f"a {cfg.stage} checkpoint without its frozen parameters: only text runs save that way")
    model = TextModel.from_pretrained(cfg.text, labels=cfg.label_names)
    full = model.state_dict()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(trained - set(state))
    if missing:
        raise ValueError(f"the checkpoint lacks trained weights {missing[:5]}")
    unknown = sorted(set(state) - set(full))
    if unknown:
        raise ValueError(f"the checkpoint holds weights the model from {cfg.text.model} lacks: {unknown[:5]}")
    return {k: state.get(k, v).float() if v.is_floating_point() else state.get(k, v) for k, v in full.items()}


def merged_lora_state(cfg: RunConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LoRA run's weights with the adapters folded in: the state dict of the plain TextModel.

    The model is built on the meta device (no memory for the base's random init) and takes the checkpoint's
    tensors as they are, so merging an 8B model needs the checkpoint's memory only.
    """
    model_config = load_config(cfg.text.model)
    kwargs = {k: v for k, v in model_kwargs(cfg.text, model_config).items() if k != "dtype"}
    with torch.device("meta"):
        model = TextModel(build_encoder(model_config, **kwargs), load_tokenizer(cfg.text.model),
                          cfg.text, cfg.label_names)
        model.prepare_finetune()
    model.load_state_dict(state, strict=True, assign=True)
    model.merge_adapters()
    return {k: v for k, v in model.state_dict().items() if not v.is_meta}
