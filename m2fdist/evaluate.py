"""Scoring a model on a split: the one evaluation path of the training loop and of ``m2fdist eval``.

Everything here computes and returns. What is saved (the best checkpoint) and written (prediction files,
reports) is decided by the caller: the training loop, the pipeline, the ``eval`` command.

    m2fdist eval --model RUN/export --shards SHARDS [--split test] [--out scores.json]

``--model`` is one stage's export (``m2fdist export``) or a bundle folder (``RUNS/model``, whose ``fusion/``
export is scored); ``--shards`` the shards that stage reads: utterance shards for text, audio and visual,
dialog feature shards (``m2fdist extract``) for fusion.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from m2fdist.metrics import classification_metrics, knn_predict


@dataclass
class Outputs:
    """What a model produced over (part of) a split: labels, per-row outputs (probabilities or embeddings)."""

    labels: np.ndarray
    outputs: np.ndarray
    keys: list[str]

    @staticmethod
    def join(parts: list[Outputs]) -> Outputs:
        parts = [p for p in parts if len(p.keys)] or parts[:1]
        if not parts:
            return Outputs(np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32), [])
        return Outputs(np.concatenate([p.labels for p in parts]), np.concatenate([p.outputs for p in parts]),
                       [k for p in parts for k in p.keys])


@torch.no_grad()
def collect(stage: Any, model: nn.Module, loader: Any) -> Outputs:
    """Run ``model`` over every batch of ``loader`` (in eval mode) and keep the valid rows."""
    labels, outputs, keys = [], [], []
    for batch in loader:
        y, o, k = stage.evaluate(model, batch)
        labels.append(y)
        outputs.append(o)
        keys += k
    if not labels:
        return Outputs(np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32), [])
    return Outputs(np.concatenate(labels), np.concatenate(outputs), keys)


def score(stage: Any, out: Outputs, knn: int) -> tuple[dict[str, Any], np.ndarray]:
    """(metrics, predicted class per row): argmax for classifiers, leave-one-out k-NN for embeddings."""
    if stage.predicts_labels:
        preds = out.outputs.argmax(axis=1) if len(out.keys) else np.zeros(0, dtype=np.int64)
    else:
        preds = knn_predict(out.outputs, out.labels, knn, len(stage.names))
    return classification_metrics(out.labels, preds, stage.names), preds


def prediction_rows(stage: Any, out: Outputs, preds: np.ndarray) -> list[dict[str, Any]]:
    """One JSON row per utterance: key, label, prediction (and probabilities for classifiers)."""
    rows = []
    for i, key in enumerate(out.keys):
        row: dict[str, Any] = {"key": key, "label": int(out.labels[i]), "pred": int(preds[i])}
        if stage.predicts_labels:
            row["probs"] = [round(float(p), 6) for p in out.outputs[i]]
        rows.append(row)
    return rows


def resolve_model(path: Path) -> Path:
    """A stage export folder: ``path`` itself, or the fusion export of a bundle."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    if (path / "fusion" / "model.safetensors").is_file():
        return path / "fusion"
    raise FileNotFoundError(f"{path}: no model.safetensors there (nor in {path / 'fusion'}): "
                            "give an export (m2fdist export RUN) or a pipeline's RUNS/model")


def evaluate_export(model_dir: Path, shards: Path, split: str, batch_size: int = 0,
                    num_workers: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, prediction rows) of an exported model on one split, in one process, in the export's fp32."""
    from m2fdist.export import load_exported
    from m2fdist.pack.index import load_index
    from m2fdist.stages import STAGES

    cfg, model = load_exported(resolve_model(model_dir))
    index = load_index(Path(shards))
    want = "features" if cfg.stage == "fusion" else "utterances"
    have = "features" if index.get("kind") == "features" else "utterances"
    if want != have:
        raise ValueError(f"{shards} holds {have} shards; the {cfg.stage} model reads {want} shards")
    if index.get("dataset") != cfg.dataset:
        raise ValueError(f"{shards} holds {index.get('dataset')} shards; the model was trained on {cfg.dataset}")
    if split not in index["splits"]:
        raise ValueError(f"split {split!r} not in {shards} (it has {', '.join(sorted(index['splits']))})")
    cfg.data.shards = str(shards)
    if batch_size:
        cfg.data.batch_size = batch_size
    cfg.data.num_workers = num_workers
    stage = STAGES[cfg.stage](cfg)
    out = collect(stage, model, stage.loader(split, False, 0, 1))
    metrics, preds = score(stage, out, cfg.triplet.knn)
    return metrics, prediction_rows(stage, out, preds)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from m2fdist import atomic

    p = argparse.ArgumentParser(prog="m2fdist eval", description="Score an exported model on one split of shards.")
    p.add_argument("--model", type=Path, required=True, help="a stage export, or a bundle folder (RUNS/model)")
    p.add_argument("--shards", type=Path, required=True, help="shards the model reads (features for fusion)")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=0, help="0: the batch size the model was trained with")
    p.add_argument("--out", type=Path, default=None, help="also write the metrics (and predictions) as JSON here")
    args = p.parse_args(argv)
    try:
        metrics, rows = evaluate_export(args.model, args.shards, args.split, args.batch_size)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"m2fdist eval: {e}", file=sys.stderr)
        return 2
    print(f"{args.split}: accuracy {100 * metrics['accuracy']:.2f}, weighted F1 {100 * metrics['weighted_f1']:.2f}, "
          f"macro F1 {100 * metrics['macro_f1']:.2f} ({metrics['count']} utterances)")
    if args.out:
        atomic.write_json(args.out, {"model": str(args.model), "shards": str(args.shards), "split": args.split,
                                     "metrics": metrics, "predictions": rows})
    else:
        print(json.dumps({k: metrics[k] for k in ("accuracy", "weighted_f1", "macro_f1", "count")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
