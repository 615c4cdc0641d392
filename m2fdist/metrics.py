"""Evaluation metrics (scikit-learn): accuracy, weighted and macro F1, per-class F1, confusion matrix."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


def classification_metrics(labels: np.ndarray, preds: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Metrics over all valid utterances; every class appears in per-class F1 and the matrix, present or not."""
    ids = list(range(len(names)))
    per_class = f1_score(labels, preds, labels=ids, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(labels, preds)) if len(labels) else 0.0,
        "weighted_f1": float(f1_score(labels, preds, labels=ids, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(labels, preds, labels=ids, average="macro", zero_division=0)),
        "per_class_f1": {n: float(f) for n, f in zip(names, per_class, strict=True)},
        "support": {n: int((labels == i).sum()) for i, n in enumerate(names)},
        "confusion_matrix": confusion_matrix(labels, preds, labels=ids).tolist(),
        "count": int(len(labels)),
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
