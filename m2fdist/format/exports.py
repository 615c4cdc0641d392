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
    try:
        meta = json.loads((path / CONFIG).read_text())
    except (OSError, ValueError):
        raise ValueError(f"{path / CONFIG}: missing or not JSON") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("run"), dict):
        raise ValueError(f"{path / CONFIG}: not an export's config (no run config in it)")
    return meta


def labels_of(meta: dict[str, Any]) -> list[str]:
    """The class names of an export's outputs, in order: its own ``labels`` (exports since they carry them),
    else the label set of the dataset it was trained on."""
    labels = meta.get("labels")
    if labels is None:
        return list(LABELS[meta["run"]["dataset"]])
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise ValueError(f"the export's labels must be a non-empty list of names, not {labels!r}")
    return labels


def bundle_parts(path: Path) -> list[str]:
    """The parts a bundle's own ``config.json`` names, each checked to be there.

    Only these are ever read: a folder may hold other parts (an earlier run's, copied in by hand), and a model
    must never be assembled from two runs.
    """
    path = Path(path)
    file = path / CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no {CONFIG}: give a bundle (the pipeline writes RUNS/model) or a stage "
                                "export (m2fdist export RUN)")
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError):
        raise ValueError(f"{file}: not JSON") from None
    parts = config.get("parts") if isinstance(config, dict) else None
    if not isinstance(parts, list) or "text" not in parts or not set(parts) <= set(BUNDLE_PARTS) \
            or len(set(parts)) != len(parts):
        raise ValueError(f"{file}: not a bundle's config (parts must list text and any of "
                         f"{', '.join(BUNDLE_PARTS[1:])} once each, not {parts!r})")
    if missing := [p for p in parts if not is_export(path / p)]:
        raise FileNotFoundError(f"{path}: its {CONFIG} names {', '.join(missing)}, but there is no "
                                f"{', '.join(p + '/' + WEIGHTS for p in missing)}")
    return [p for p in BUNDLE_PARTS if p in parts]


def resolve_model(path: Path) -> Path:
    """The export that scores for ``path``: ``path`` itself when it is one, else the bundle's fusion export
    (its text export for a text-only bundle)."""
    path = Path(path)
    if is_export(path):
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder: give an export (m2fdist export RUN) or a pipeline's "
                                "RUNS/model")
    parts = bundle_parts(path)
    return path / ("fusion" if "fusion" in parts else "text")
