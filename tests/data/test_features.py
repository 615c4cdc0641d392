"""Dialog feature samples read back: a non-finite value is a bad shard named by its sample and utterances, before
one NaN can turn a dimension's standardisation into NaN for every dialog."""

from __future__ import annotations

import json

import numpy as np
import pytest

from m2fdist.data.decode import ShardDecodeError
from m2fdist.data.features import decode_features, feature_moments
from m2fdist.format.features import npy_bytes

pytestmark = pytest.mark.unit


def sample(text: np.ndarray) -> dict:
    return {"__url__": "train-r000of001.tar", "__key__": "meld_train_dialog_0", "json": json.dumps({}).encode(),
            "labels.npy": npy_bytes(np.zeros(len(text), dtype=np.int64)), "text.npy": npy_bytes(text)}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_refused_with_their_place(bad):
    good = np.ones((3, 4), dtype=np.float32)
    assert decode_features(sample(good), 7)["text"].shape == (3, 4)
    poisoned = good.copy()
    poisoned[2, 1] = bad
    with pytest.raises(ShardDecodeError, match=r"train-r000of001.tar:meld_train_dialog_0: text.npy holds "
                                                r"non-finite values \(utterances \[2\]\)"):
        decode_features(sample(poisoned), 7)


def test_moments_of_finite_features_stay_finite(tiny_features):
    moments = feature_moments(tiny_features, "train", ("text", "audio"))
    assert all(np.isfinite(m).all() and np.isfinite(s).all() for m, s in moments.values())
