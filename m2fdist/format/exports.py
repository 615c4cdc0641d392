"""The export format both sides share: a stage export and a bundle of them.

A stage export (``m2fdist export``) is a folder with ``model.safetensors`` and ``config.json`` (the run config it
was trained with, its checkpoint tag, stage and labels), and for text the encoder's config and tokenizer in
``text_encoder/``. A bundle (``RUNS/model``) holds one export per part (``text/``, ``audio/``, ``visual/``,
``fusion/``; ``text/`` alone for a text-only model), its own ``config.json`` and a model card. Config checks,
the API, evaluation and the loader read exports through these helpers: JSON only, never a pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from m2fdist.common.labels import LABELS
from m2fdist.common.modalities import STAGES

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
BUNDLE_PARTS = STAGES  # a bundle holds one export per trained stage, under the stage's name
MAX_JSON_BYTES = 16 << 20  # an export's or a bundle's config.json; real ones are a few kB


def is_export(path: Path) -> bool:
    """One stage's export (as opposed to a bundle, or neither)."""
    return (Path(path) / WEIGHTS).is_file()


def read_meta(path: Path) -> dict[str, Any]:
    """An export's ``config.json``: the run config (``run``), ``stage``, ``tag`` and ``labels``.

    FileNotFoundError when the folder holds no export, ValueError when its config is not an export's.
    """
    path = Path(path)
    if not is_export(path):
        raise FileNotFoundError(f"{path / WEIGHTS} not found: run `m2fdist export` first")
    if not (path / CONFIG).is_file():
        raise ValueError(f"{path / CONFIG}: missing (an export holds its config beside its weights)")
    meta = read_json(path / CONFIG)
    if not isinstance(meta, dict) or not isinstance(meta.get("run"), dict):
        raise ValueError(f"{path / CONFIG}: not an export's config (no run config in it)")
    return meta


def read_json(path: Path, limit: int = MAX_JSON_BYTES) -> Any:
    """A config file of an export or a bundle, parsed; ValueError naming the file for anything that is not JSON.

    Bundles come from other people and the Hub: a file past ``limit`` bytes, one that is not UTF-8, broken
    JSON and JSON nested deeper than the parser's recursion are each a one-line error, not a traceback.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > limit:
            raise ValueError(f"{path}: {size:,} bytes, too large for a config file (at most {limit:,})")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text, so not JSON") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: a folder, not a JSON file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to be a config") from None


def labels_of(meta: dict[str, Any]) -> list[str]:
    """The class names of an export's outputs, in order: its own ``labels`` (exports since they carry them),
    else the label set of the dataset it was trained on."""
    labels = meta.get("labels")
    if labels is None:
        return list(LABELS[meta["run"]["dataset"]])
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise ValueError(f"the export's labels must be a non-empty list of names, not {labels!r}")
    return labels


def resolve_model(path: Path) -> Path:
    """The export that scores for ``path``: ``path`` itself when it is one, else the fusion export of a bundle."""
    path = Path(path)
    if is_export(path):
        return path
    if is_export(path / "fusion"):
        return path / "fusion"
    raise FileNotFoundError(f"{path}: no {WEIGHTS} there (nor in {path / 'fusion'}): "
                            "give an export (m2fdist export RUN) or a pipeline's RUNS/model")
