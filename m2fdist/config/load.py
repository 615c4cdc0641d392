"""One merge for every config: schema <- YAML file <- ``key=value`` overrides (the form W&B sweeps pass).

Loading never touches the disk beyond the YAML file itself, so ``--print-config`` can show a config on a machine
that holds neither its shards nor its models; the checks against the data are :mod:`m2fdist.config.checks`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from m2fdist.config.checks import check_data, check_extract_data, check_extract_values, check_values
from m2fdist.config.errors import ConfigError
from m2fdist.config.schema import ExtractConfig, RunConfig
from m2fdist.config.trial import trial_output_dir


def merge(schema: type, path: str | Path | None, overrides: list[str] | tuple[str, ...],
           legacy: dict[str, str | None] | None = None) -> Any:
    """Schema ← YAML file ← ``key=value`` overrides, turned into an instance of ``schema``.

    ``legacy`` names top-level YAML keys that older files carry and this schema drops (key → the one value
    dropped, None for any value); another value stays and is reported as an unknown key.
    """
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad}")
    try:
        merged = OmegaConf.structured(schema)
        if path is not None:
            if not Path(path).is_file():
                raise ConfigError(f"config file {path} not found")
            loaded = OmegaConf.load(path)
            refuse_resolvers(OmegaConf.to_container(loaded, resolve=False), path)
            _check_kind(schema, path, loaded, legacy or {})
            merged = OmegaConf.merge(merged, loaded)
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        refuse_resolvers(OmegaConf.to_container(merged, resolve=False), path)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        where = f"{path or 'config'}" + (f", key {key}" if key else "")
        raise ConfigError(f"{where}: {str(e).splitlines()[0]}") from None
    except ValueError as e:  # a sub-config's own check (e.g. fusion.modalities)
        raise ConfigError(str(e).splitlines()[0]) from None


# ``${name:...}``: a resolver call (oc.env, oc.decode, oc.create, ...), as opposed to a plain ``${key}`` reference.
RESOLVER_CALL = re.compile(r"\$\{\s*[\w.]+\s*:")


def refuse_resolvers(node: Any, path: str | Path | None, key: str = "") -> None:
    """Refuse every resolver interpolation in a config, before anything resolves it.

    A config is data until a run starts: ``${oc.env:HF_TOKEN}`` would put a secret into a shards URL, the run's
    ``config.json``, W&B and the error messages, and it resolves even when the config is only being printed.
    Plain references to other keys (``${train.lr}``) stay. Values a run needs from the environment are read
    by the code that needs them (the Hub token by huggingface_hub, W&B's key by wandb), never by the config.
    """
    if isinstance(node, dict):
        for k, v in node.items():
            refuse_resolvers(v, path, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            refuse_resolvers(v, path, f"{key}[{i}]")
    elif isinstance(node, str) and RESOLVER_CALL.search(node):
        raise ConfigError(f"{path or 'config'}, key {key}: {node!r} calls a resolver; a config is data: "
                          "interpolations such as ${oc.env:...} are refused (give the value as key=value, or let "
                          "the tool that needs a secret read it from the environment itself)")


def _check_kind(schema: type, path: str | Path, loaded: Any, legacy: dict[str, str | None]) -> None:
    """A training config given to extraction or the other way round: say so, not "unknown key"."""
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: not a mapping of config keys")
    stage = loaded.get("stage")
    if schema is RunConfig and (stage == "extract" or "extract" in loaded):
        raise ConfigError(f"{path} is an extraction config: run it with `m2fdist extract` / launch/extract.py")
    if schema is ExtractConfig and stage is not None and stage != "extract":
        raise ConfigError(f"{path} is a {stage} training config: extraction takes an extract config "
                          "(configs/<dataset>/extract.yaml)")
    for key, accepted in legacy.items():
        if key in loaded and accepted in (None, loaded[key]):
            del loaded[key]


def read_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A training stage's config as written (YAML ← overrides), its values checked, nothing on disk read.

    What ``--print-config`` shows; :func:`load_config` adds the checks against the data. Under a W&B sweep
    agent, ``output_dir`` becomes the trial's own folder (:mod:`m2fdist.config.trial`).
    """
    cfg: RunConfig = merge(RunConfig, path, overrides)
    cfg.output_dir = trial_output_dir(cfg.output_dir, os.environ)
    cfg.text.num_classes = cfg.fusion.num_classes = cfg.num_classes  # the model configs follow the dataset
    check_values(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A training stage's config: schema ← YAML file ← ``key=value`` overrides ← what the data knows, checked.

    The fusion stage's unset feature widths (``fusion.dim_* = 0``) are read from the features' index.json.
    """
    cfg = read_config(path, overrides)
    check_data(cfg)
    return cfg


# Older extract YAMLs carry ``stage: extract`` and an ``output_dir``; both are accepted and dropped.
EXTRACT_LEGACY: dict[str, str | None] = {"stage": "extract", "output_dir": None}


def read_extract_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> ExtractConfig:
    """An extraction config as written, its values checked, nothing on disk read."""
    cfg: ExtractConfig = merge(ExtractConfig, path, overrides, legacy=EXTRACT_LEGACY)
    check_extract_values(cfg)
    return cfg


def load_extract_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> ExtractConfig:
    """An extraction config, checked against the shards and the exports, ``data.num_frames`` resolved."""
    cfg = read_extract_config(path, overrides)
    check_extract_data(cfg)
    return cfg


def run_config(run_dir: Path) -> RunConfig:
    """The resolved config a run saved, turned back into a checked RunConfig."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run's output_dir?")
    return from_dict(json.loads(path.read_text()))


def from_dict(raw: dict[str, Any]) -> RunConfig:
    """A saved run config (``config.json`` of a run or an export) back into a RunConfig."""
    raw = {k: v for k, v in raw.items() if k != "extract"}  # runs saved before extraction had its own config
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), raw))
