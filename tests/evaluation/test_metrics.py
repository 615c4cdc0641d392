"""Evaluation metrics agree with scikit-learn's, the field's reference, on random and degenerate cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from m2fdist.evaluation.metrics import classification_metrics

pytestmark = pytest.mark.unit

NAMES = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]


def reference(labels: np.ndarray, preds: np.ndarray) -> dict:
    ids = list(range(len(NAMES)))
    return {
        "accuracy": accuracy_score(labels, preds) if len(labels) else 0.0,
        "weighted_f1": f1_score(labels, preds, labels=ids, average="weighted", zero_division=0),
        "macro_f1": f1_score(labels, preds, labels=ids, average="macro", zero_division=0),
        "per_class_f1": f1_score(labels, preds, labels=ids, average=None, zero_division=0).tolist(),
        "confusion_matrix": confusion_matrix(labels, preds, labels=ids).tolist(),
    }


def cases():
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 40, 500):
        for classes in (1, 3, 7):  # 1 and 3: most classes absent from labels and predictions
            labels = rng.integers(0, classes, n)
            yield labels, rng.integers(0, classes, n)
            yield labels, labels.copy()  # perfect
            yield labels, (labels + 1) % len(NAMES)  # all wrong, predicting classes never present
            yield labels, np.zeros(n, dtype=int)  # one class predicted


@pytest.mark.parametrize("i", range(60))
def test_metrics_match_scikit_learn(i):
    labels, preds = list(cases())[i]
    ours, ref = classification_metrics(labels, preds, NAMES), reference(labels, preds)
    for key in ("accuracy", "weighted_f1", "macro_f1"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key
    assert list(ours["per_class_f1"].values()) == pytest.approx(ref["per_class_f1"], abs=1e-12)
    assert ours["confusion_matrix"] == ref["confusion_matrix"]
    assert ours["count"] == len(labels) and sum(ours["support"].values()) == len(labels)


def test_no_utterances_and_out_of_range_ids():
    empty = classification_metrics(np.array([], dtype=int), np.array([], dtype=int), NAMES)
    assert empty["count"] == 0 and empty["accuracy"] == empty["weighted_f1"] == empty["macro_f1"] == 0.0
    assert empty["confusion_matrix"] == [[0] * 7] * 7
    with pytest.raises(ValueError, match="class ids"):
        classification_metrics(np.array([0, 7]), np.array([0, 1]), NAMES)
