"""An export folder back to (config, model in eval mode): safetensors and JSON only, never a pickle.

An export may come from anyone (a shared bundle, the Hub), so nothing in it is believed before it is checked.
The model is first built on the meta device (shapes only, no memory) from the export's configs, and compared
with the weights file's header (tensor names, shapes, kinds) and its size; only a model the file exactly fills
is then built for real. A config claiming an encoder of 16384 × 64 layers in a 200 KB bundle is refused in
milliseconds instead of allocating until the process dies.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from m2fdist.config.load import from_dict
from m2fdist.config.schema import RunConfig
from m2fdist.format.exports import CONFIG, WEIGHTS, labels_of, load_weights, read_json, read_meta, weights_header
from m2fdist.models.build import build_model
from m2fdist.models.pretrained import build_encoder, load_config, load_tokenizer
from m2fdist.models.text import TextModel, model_kwargs

# What a model may hold beyond its weights file (buffers the file does not carry: position ids, rotary tables):
# the file's own bytes again plus this much. Anything larger is a config claiming shapes the file cannot back.
SLACK_BYTES = 64 << 20


def check_against(model: nn.Module, header: dict[str, dict[str, Any]], file: Path) -> None:
    """Raise unless ``model`` (on the meta device) has exactly the file's tensors, and no more memory than the
    file's size allows for the buffers a file does not carry."""
    state = model.state_dict()
    missing, unexpected = sorted(set(state) - set(header)), sorted(set(header) - set(state))
    if missing or unexpected:
        raise ValueError(f"{file}: weights do not match the model its config describes "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    for name, t in state.items():
        shape, floating = tuple(header[name]["shape"]), header[name]["dtype"].startswith(("F", "BF"))
        if tuple(t.shape) != shape or t.is_floating_point() != floating:
            raise ValueError(f"{file}: {name} is {list(shape)} in the file, {list(t.shape)} in the model its "
                             "config describes")
    need = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if need > 2 * file.stat().st_size + SLACK_BYTES:
        raise ValueError(f"{file}: the model its config describes needs {need / 2**20:.0f} MiB, more than its "
                         f"{file.stat().st_size / 2**20:.1f} MiB weights file can fill")


def _checked_build(build: Callable[[], nn.Module], file: Path) -> nn.Module:
    """``build()`` on the meta device, checked against the file, then built for real."""
    header = weights_header(file)
    with torch.device("meta"):
        check_against(build(), header, file)
    return build()


def load_exported(path: Path, device: str = "cpu", meta: dict[str, Any] | None = None) -> tuple[RunConfig, nn.Module]:
    """(config, model in eval mode) from an export folder; the model is built from the export's own configs.

    ``meta``: its config.json as :func:`~m2fdist.format.exports.read_meta` gave it to a caller that has read it
    already (the API reads each part's once); read here otherwise.
    """
    path = Path(path)
    meta = read_meta(path) if meta is None else meta
    cfg = from_dict(meta["run"], f"{path / CONFIG}")
    labels = labels_of(meta)
    if len(labels) != cfg.num_classes:
        raise ValueError(f"{path}: {len(labels)} labels {labels}, but the {cfg.dataset} model has "
                         f"{cfg.num_classes} outputs")
    file = path / WEIGHTS
    if cfg.stage == "text":
        enc = path / "text_encoder"
        read_json(enc / CONFIG)  # one clear error for a config that is not JSON, before transformers reads it
        model_config, tokenizer = load_config(enc), load_tokenizer(enc)
        kwargs = {k: v for k, v in model_kwargs(cfg.text, model_config).items() if k != "dtype"}

        def build() -> nn.Module:  # plain: LoRA was merged at export
            return TextModel(build_encoder(model_config, **kwargs), tokenizer, cfg.text, labels)
    else:
        def build() -> nn.Module:
            return build_model(cfg.stage, cfg, len(labels))
    model = _checked_build(build, file)
    model.load_state_dict(load_weights(file), strict=True)
    return cfg, model.to(device).eval()
