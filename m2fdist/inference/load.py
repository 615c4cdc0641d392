"""An export folder back to (config, model in eval mode): safetensors and JSON only, never a pickle."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from m2fdist.config.load import from_dict
from m2fdist.config.schema import RunConfig
from m2fdist.format.exports import WEIGHTS, labels_of, read_meta
from m2fdist.models.build import build_model
from m2fdist.models.text import TextModel, model_kwargs


def load_exported(path: Path, device: str = "cpu") -> tuple[RunConfig, nn.Module]:
    """(config, model in eval mode) from an export folder; the model is built from the export's own configs."""
    path = Path(path)
    meta = read_meta(path)
    cfg = from_dict(meta["run"])
    labels = labels_of(meta)
    if len(labels) != cfg.num_classes:
        raise ValueError(f"{path}: {len(labels)} labels {labels}, but the {cfg.dataset} model has "
                         f"{cfg.num_classes} outputs")
    if cfg.stage == "text":
        enc = path / "text_encoder"
        model_config = AutoConfig.from_pretrained(enc)
        kwargs = {k: v for k, v in model_kwargs(cfg.text, model_config).items() if k != "dtype"}
        encoder = AutoModel.from_config(model_config, **kwargs)  # plain: LoRA was merged at export
        model: nn.Module = TextModel(encoder, AutoTokenizer.from_pretrained(enc), cfg.text, labels)
    else:
        model = build_model(cfg.stage, cfg, len(labels))
    missing, unexpected = model.load_state_dict(load_file(str(path / WEIGHTS)), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return cfg, model.to(device).eval()
