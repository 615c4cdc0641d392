"""Evaluation metrics: accuracy, weighted and macro F1, per-class F1, confusion matrix.

Computed from the confusion matrix in numpy, as scikit-learn defines them (``f1_score(..., labels=all,
zero_division=0)``; the tests hold them to scikit-learn's on random and degenerate cases). Importing
scikit-learn's metrics costs 1.7 s of CPU in every rank of every launch (it pulls in scipy), most of a tiny
launch's own work; these are a few array operations.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """[true class, predicted class] counts."""
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    if len(labels) and (min(labels.min(), preds.min()) < 0 or max(labels.max(), preds.max()) >= num_classes):
        raise ValueError(f"class ids must be in [0, {num_classes})")
    return np.bincount(labels * num_classes + preds, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def f1_per_class(matrix: np.ndarray) -> np.ndarray:
    """F1 of each class, 2 tp / (2 tp + fp + fn); 0 for a class neither present nor predicted."""
    tp = np.diag(matrix).astype(np.float64)
    denominator = matrix.sum(axis=0) + matrix.sum(axis=1)  # (tp + fp) + (tp + fn)
    return np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)


def classification_metrics(labels: np.ndarray, preds: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Metrics over all valid utterances; every class appears in per-class F1 and the matrix, present or not."""
    matrix = confusion(labels, preds, len(names))
    per_class = f1_per_class(matrix)
    support = matrix.sum(axis=1)
    total = int(support.sum())
    return {
        "accuracy": float(np.trace(matrix) / total) if total else 0.0,
        "weighted_f1": float((per_class * support).sum() / total) if total else 0.0,
        "macro_f1": float(per_class.mean()) if len(names) else 0.0,
        "per_class_f1": {n: float(f) for n, f in zip(names, per_class, strict=True)},
        "support": {n: int(c) for n, c in zip(names, support, strict=True)},
        "confusion_matrix": matrix.tolist(),
        "count": total,
    }


def knn_predict(emb: np.ndarray, labels: np.ndarray, k: int, num_classes: int) -> np.ndarray:
    """Leave-one-out k-NN (cosine) votes: how well triplet-trained embeddings separate the emotions."""
    if len(emb) < 2:
        return labels.copy()
    x = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    k = min(k, len(emb) - 1)
    nearest = np.argsort(-sim, axis=1)[:, :k]
    votes = np.zeros((len(emb), num_classes))
    for j in range(k):
        np.add.at(votes, (np.arange(len(emb)), labels[nearest[:, j]]), 1.0 / (j + 1))
    return votes.argmax(axis=1)
