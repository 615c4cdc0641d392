"""An exported model scored on one split of shards, in one process, through the same scoring as training.

The model is one stage's export (``m2fdist export``) or a bundle folder (``RUNS/model``, whose ``fusion/``
export is scored); the shards are those that stage reads: utterance shards for text, audio and visual, dialog
feature shards (``m2fdist extract``) for fusion. The stage's own loader and outputs are used, so an export
scores here exactly as its run scored it (``m2fdist eval``, the report).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from m2fdist.evaluation.scoring import collect, prediction_rows, score
from m2fdist.format.exports import resolve_model
from m2fdist.format.index import load_index
from m2fdist.inference.load import load_exported
from m2fdist.training.stages import STAGE_TYPES


def evaluate_export(model_dir: Path, shards: str | Path, split: str, batch_size: int = 0,
                    num_workers: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, prediction rows) of an exported model on one split, in one process, in the export's fp32."""
    cfg, model = load_exported(resolve_model(model_dir))
    index = load_index(shards)  # a folder or a URL, as data.shards
    want = "features" if cfg.stage == "fusion" else "utterances"
    have = "features" if index.get("kind") == "features" else "utterances"
    if want != have:
        raise ValueError(f"{shards} holds {have} shards; the {cfg.stage} model reads {want} shards")
    if index.get("dataset") != cfg.dataset:
        raise ValueError(f"{shards} holds {index.get('dataset')} shards; the model was trained on {cfg.dataset}")
    if index.get("label_names") != cfg.label_names:  # a manifest corpus's set is its own: two may differ
        raise ValueError(f"{shards} names the labels {index.get('label_names')}; the model predicts "
                         f"{cfg.label_names}")
    if split not in index["splits"]:
        raise ValueError(f"split {split!r} not in {shards} (it has {', '.join(sorted(index['splits']))})")
    cfg.data.shards = str(shards)
    if batch_size:
        cfg.data.batch_size = batch_size
    cfg.data.num_workers = num_workers
    stage = STAGE_TYPES[cfg.stage](cfg)
    out = collect(stage, model, stage.loader(split, False, 0, 1))
    metrics, preds = score(stage, out, cfg.triplet.knn)
    return metrics, prediction_rows(stage, out, preds)
