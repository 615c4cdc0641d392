"""Hugging Face configs, tokenizers and encoders loaded as data: nothing in a model folder ever runs.

A text model's folder (``text.model``, or a bundle's ``text/text_encoder``) may come from anywhere. Its
``config.json`` or ``tokenizer_config.json`` can name Python classes (``auto_map``) in files beside it or in
another Hub repository; transformers then asks on the terminal whether to run them, and ``y`` runs them. Every
load in m2fdist goes through this module: ``trust_remote_code=False`` on every call, and a folder or config that
names custom code is refused with one clear error before transformers reads anything else. Only the model
families transformers itself ships can be built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from m2fdist.format.exports import read_json

# transformers is imported in each function, not at the top: it costs seconds, and audio, visual and fusion
# ranks import this package without ever loading a text model.

SETTINGS = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")


class UntrustedModel(ValueError):
    """A model folder or config that would need its own code run to load."""


def _refuse(where: str, auto_map: Any) -> None:
    names = sorted(auto_map) if isinstance(auto_map, dict) else auto_map
    raise UntrustedModel(f"{where} names custom code (auto_map: {names}); m2fdist never runs code from a model "
                         "folder: use a model family transformers ships, or convert the model to one")


def check_folder(path: str | Path) -> None:
    """Refuse a local model folder whose settings files name custom code; a Hub id passes (its config is
    checked once loaded, and transformers refuses remote code with ``trust_remote_code=False``)."""
    folder = Path(path)
    if not folder.is_dir():
        return
    for name in SETTINGS:
        file = folder / name
        if not file.is_file():
            continue
        settings = read_json(file)  # bounded in size and depth, one clear error otherwise
        if not isinstance(settings, dict):
            raise UntrustedModel(f"{file}: not a JSON object")
        if "auto_map" in settings:
            _refuse(str(file), settings["auto_map"])


def load_config(path: str | Path) -> Any:
    """The model's ``PretrainedConfig``: a built-in family only."""
    from transformers import AutoConfig

    check_folder(path)
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    if getattr(config, "auto_map", None):
        _refuse(f"{path}: its config", config.auto_map)
    return config


def load_tokenizer(path: str | Path) -> Any:
    """The model's tokenizer: a built-in tokenizer class only."""
    from transformers import AutoTokenizer

    check_folder(path)
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)


def load_encoder(path: str | Path, **kwargs: Any) -> Any:
    """The pretrained encoder with its weights (``AutoModel.from_pretrained``): a built-in family only."""
    from transformers import AutoModel

    load_config(path)  # refuses custom code before any weight is read
    return AutoModel.from_pretrained(str(path), trust_remote_code=False, **kwargs)


def build_encoder(model_config: Any, **kwargs: Any) -> Any:
    """An encoder of ``model_config``'s shapes, randomly initialised (weights come later): built-in only."""
    from transformers import AutoModel

    if getattr(model_config, "auto_map", None):
        _refuse("the encoder config", model_config.auto_map)
    return AutoModel.from_config(model_config, trust_remote_code=False, **kwargs)
