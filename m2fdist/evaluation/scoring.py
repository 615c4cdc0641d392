"""Scoring a model on a split: the one evaluation path of the training loop and of ``m2fdist eval``.

Everything here computes and returns. What is saved (the best checkpoint) and written (prediction files,
reports) is decided by the caller: the training loop, the pipeline, the ``eval`` command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from m2fdist.evaluation.metrics import classification_metrics, knn_predict


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
