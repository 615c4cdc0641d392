"""``m2fdist export``: one safetensors model (+ its config) from a stage's sharded DeepSpeed checkpoint.

The fp32 weights are rebuilt from the ZeRO shards (any stage, ZeRO-3 included) by DeepSpeed's zero_to_fp32;
the text stage also saves its model's config and tokenizer, so the export loads anywhere without the original
checkpoint or the hub. A text model fine-tuned with LoRA is exported merged (W + B·A·alpha/r folded into the
base weights): the export is a plain model of the base's architecture that loads without peft and runs as
fast as the base. Loading an export reads safetensors and JSON only (no pickle).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from m2fdist import atomic, checkpoint
from m2fdist.config import RunConfig
from m2fdist.labels import LABELS

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def run_config(run_dir: Path) -> RunConfig:
    """The resolved config a run saved, turned back into a checked RunConfig."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run's output_dir?")
    return from_dict(json.loads(path.read_text()))


def from_dict(raw: dict[str, Any]) -> RunConfig:
    from omegaconf import OmegaConf

    raw = {k: v for k, v in raw.items() if k != "extract"}  # runs saved before extraction had its own config
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), raw))


def fp32_state_dict(ckpt_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """Consolidated fp32 weights of a tag, whatever its ZeRO stage."""
    files = list((Path(ckpt_dir) / tag).glob("*optim_states.pt"))
    if files:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    # ZeRO stage 0 keeps the whole module in the model-states file. Like every DeepSpeed checkpoint it is a
    # pickle: export only checkpoints you trust (the export itself is safetensors).
    states = torch.load(Path(ckpt_dir) / tag / "mp_rank_00_model_states.pt", map_location="cpu",
                        weights_only=False)
    return {k: v.float() for k, v in states["module"].items()}


def export(run_dir: Path, tag: str = "best", out: Path | None = None) -> Path:
    """Write ``out`` (default run_dir/export): model.safetensors, config.json and, for text, the encoder.

    The folder is built under a temporary name and renamed into place when complete, so an interrupted
    export leaves the previous export (or none), never a weights file without its config.
    """
    from safetensors.torch import save_file

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
    # the label names in output order travel with the weights: a reader needs no table to name the classes
    meta = {"run": cfg.to_dict(), "tag": tag, "stage": cfg.stage, "labels": list(LABELS[cfg.dataset])}
    if checkpoint.frozen_source(ckpt_dir, tag) is not None:
        state = with_frozen_base(cfg, state)
    if cfg.stage == "text" and cfg.text.finetune in ("lora", "peft"):
        state = merged_lora_state(cfg, state)
        kind = "LoRA" if cfg.text.finetune == "lora" else str(cfg.text.peft.get("peft_type", "")).upper()
        meta["text_weights"] = f"{kind} merged into the base weights"
    out = Path(out or run_dir / "export")
    tmp = atomic.temp_dir_for(out)
    try:
        save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps(meta, indent=1))
        if cfg.stage == "text":
            from transformers import AutoConfig, AutoTokenizer

            AutoConfig.from_pretrained(cfg.text.model).save_pretrained(tmp / "text_encoder")
            AutoTokenizer.from_pretrained(cfg.text.model).save_pretrained(tmp / "text_encoder")
        atomic.publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def with_frozen_base(cfg: RunConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint that left its frozen base out (LoRA, frozen encoder), completed from ``text.model``.

    Only frozen parameters may be missing: a trained weight absent from the checkpoint is an error, not
    something the base may stand in for.
    """
    from m2fdist.models.text import TextModel

    if cfg.stage != "text":
        raise ValueError(f"a {cfg.stage} checkpoint without its frozen parameters: only text runs save that way")
    model = TextModel.from_pretrained(cfg.text, labels=LABELS[cfg.dataset])
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
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from m2fdist.models.text import TextModel, model_kwargs

    model_config = AutoConfig.from_pretrained(cfg.text.model)
    kwargs = {k: v for k, v in model_kwargs(cfg.text, model_config).items() if k != "dtype"}
    with torch.device("meta"):
        model = TextModel(AutoModel.from_config(model_config, **kwargs), AutoTokenizer.from_pretrained(cfg.text.model),
                          cfg.text, LABELS[cfg.dataset])
        model.prepare_finetune()
    model.load_state_dict(state, strict=True, assign=True)
    model.merge_adapters()
    return {k: v for k, v in model.state_dict().items() if not v.is_meta}


def labels_of(meta: dict[str, Any]) -> list[str]:
    """The class names of an export's outputs, in order: its own ``labels`` (exports since they carry them),
    else the label set of the dataset it was trained on."""
    labels = meta.get("labels")
    if labels is None:
        return list(LABELS[meta["run"]["dataset"]])
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise ValueError(f"the export's labels must be a non-empty list of names, not {labels!r}")
    return labels


def load_exported(path: Path, device: str = "cpu") -> tuple[RunConfig, nn.Module]:
    """(config, model in eval mode) from an export folder."""
    from safetensors.torch import load_file

    from m2fdist.stages import STAGES

    path = Path(path)
    if not (path / WEIGHTS).is_file():
        raise FileNotFoundError(f"{path / WEIGHTS} not found: run `m2fdist export` first")
    meta = json.loads((path / CONFIG).read_text())
    cfg = from_dict(meta["run"])
    labels = labels_of(meta)
    if len(labels) != cfg.num_classes:
        raise ValueError(f"{path / CONFIG}: {len(labels)} labels {labels}, but the {cfg.dataset} model has "
                         f"{cfg.num_classes} outputs")
    if cfg.stage == "text":
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        from m2fdist.models.text import TextModel, model_kwargs

        enc = path / "text_encoder"
        model_config = AutoConfig.from_pretrained(enc)
        kwargs = {k: v for k, v in model_kwargs(cfg.text, model_config).items() if k != "dtype"}
        encoder = AutoModel.from_config(model_config, **kwargs)  # plain: LoRA was merged at export
        model: nn.Module = TextModel(encoder, AutoTokenizer.from_pretrained(enc), cfg.text, labels)
    else:
        model = STAGES[cfg.stage](cfg).build_model()
    missing, unexpected = model.load_state_dict(load_file(str(path / WEIGHTS)), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return cfg, model.to(device).eval()


BUNDLE_PARTS = ("text", "audio", "visual", "fusion")


def write_bundle(runs: Path, out: Path | None = None) -> Path:
    """``RUNS/model``: the stage exports a prediction needs, the bundle's ``config.json`` and its model card.

    A pipeline with a fusion stage ships text, audio, visual and fusion; a text-only pipeline ships text alone
    (its classifier head predicts). The model card (``README.md``, Hugging Face front matter) is generated
    from the exports' configs and, when the pipeline's ``report.json`` exists, its scores; call this again
    after the report to refresh the card. Parts are copied whole, then the card and config are written last.
    """
    from m2fdist import __version__
    from m2fdist.card import model_card

    runs = Path(runs)
    out = Path(out or runs / "model")
    fused = (runs / "fusion" / "export" / WEIGHTS).is_file()
    parts = BUNDLE_PARTS if fused else ("text",)
    missing = [p for p in parts if not (runs / p / "export" / WEIGHTS).is_file()]
    if missing:
        raise FileNotFoundError(f"{runs}: no export of {', '.join(missing)} (m2fdist export {runs}/STAGE)")
    for part in parts:
        shutil.copytree(runs / part / "export", out / part, dirs_exist_ok=True)
    metas = {p: json.loads((out / p / CONFIG).read_text()) for p in parts}
    main_meta = metas["fusion" if fused else "text"]
    config = {"format": "m2fdist-bundle", "m2fdist": __version__, "dataset": main_meta["run"]["dataset"],
              "labels": labels_of(main_meta), "parts": list(parts)}
    report_path = runs / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    atomic.write_text(out / "README.md", model_card(config, metas, report))
    atomic.write_json(out / CONFIG, config)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="m2fdist export", description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a stage's output_dir (with --bundle: a pipeline's runs folder)")
    p.add_argument("--tag", default="best", help="best, latest, or a checkpoint tag")
    p.add_argument("--out", type=Path, default=None, help="default: RUN/export (with --bundle: RUN/model)")
    p.add_argument("--bundle", action="store_true", help="(re)write the bundle of a pipeline's runs folder from "
                   "its stage exports: what predict and M2FNet.from_pretrained load, with its model card (scores "
                   "from RUN/report.json when there is one)")
    args = p.parse_args(argv)
    try:
        print(write_bundle(args.run, args.out) if args.bundle else export(args.run, args.tag, args.out))
    except (FileNotFoundError, ValueError) as e:
        print(f"m2fdist export: {e}", file=sys.stderr)
        return 2
    return 0



if __name__ == "__main__":
    sys.exit(main())
