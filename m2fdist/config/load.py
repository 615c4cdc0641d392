"""One merge for every config: schema <- YAML file <- ``key=value`` overrides (the form W&B sweeps pass).

Loading never touches the disk beyond the YAML file itself, so ``--print-config`` can show a config on a machine
that holds neither its shards nor its models; the checks against the data are :mod:`m2fdist.config.checks`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from m2fdist.config.checks import check_data, check_extract_data, check_extract_values, check_values
from m2fdist.config.errors import ConfigError
from m2fdist.config.schema import ExtractConfig, RunConfig
from m2fdist.config.trial import trial_output_dir
from m2fdist.format.exports import read_json


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
            loaded = read_yaml(path)
            refuse_resolvers(OmegaConf.to_container(loaded, resolve=False), path)
            _check_kind(schema, path, loaded, legacy or {})
            merged = OmegaConf.merge(merged, loaded)
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        refuse_resolvers(OmegaConf.to_container(merged, resolve=False), path)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise _one_line(f"{path or 'config'}", e) from None
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


def _one_line(where: str, e: Exception) -> ConfigError:
    """OmegaConf's several-line message (the key, reference and object types) as one line naming the key."""
    key = getattr(e, "full_key", None)
    return ConfigError(f"{where}" + (f", key {key}" if key else "") + f": {str(e).splitlines()[0]}")


def read_yaml(path: str | Path) -> Any:
    """A config file as OmegaConf reads it; ConfigError in one line naming the file and line when it is not
    YAML, not UTF-8, nested past the parser's recursion, or asks for a Python object (``!!python/object``:
    OmegaConf's loader builds plain data only, and a config is data)."""
    try:
        return OmegaConf.load(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark is not None else f"{path}"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if tag := re.search(r"tag:yaml\.org,2002:(python/[^'\s]*)", problem):
            raise ConfigError(f"{where}: the YAML tag !!{tag.group(1)} is refused: a config is plain data "
                              "(numbers, strings, lists, mappings), never a Python object") from None
        raise ConfigError(f"{where}: not valid YAML ({problem})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text, so not a YAML config") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply to be a config") from None


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
    if cfg.label_names:  # MELD's and IEMOCAP's fixed sets; a manifest run's come from its shards (check_data)
        cfg.use_labels(cfg.label_names)
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
    return from_dict(read_json(path), f"{path}")


def from_dict(raw: dict[str, Any], where: str = "a saved run config") -> RunConfig:
    """A saved run config (``config.json`` of a run or an export) back into a RunConfig.

    ``where`` names it in the ConfigError (one line) for a value of the wrong type, an unknown key or a value a
    section refuses: an export may come from anywhere, and its config is input like any other.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a run config is a JSON object, not {type(raw).__name__}")
    raw = {k: v for k, v in raw.items() if k != "extract"}  # runs saved before extraction had its own config
    refuse_resolvers(raw, where)  # an export's ${oc.env:...} would resolve here, on the loading machine
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), raw))
    except OmegaConfBaseException as e:
        raise _one_line(where, e) from None
    except (ValueError, TypeError) as e:  # a section's own check, or a section that is not a mapping
        raise ConfigError(f"{where}: {str(e).splitlines()[0]}") from None
