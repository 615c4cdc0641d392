"""Nonsense config values are refused before any launch, with the key and its bound."""

from __future__ import annotations

import pytest

from m2fdist.config.errors import ConfigError
from m2fdist.config.load import load_config

# -- nonsense config values -----------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("override, message", [
    ("train.log_every=0", "train.log_every must be >= 1"), ("train.lr=-1e-3", "train.lr must be > 0.0"),
    ("train.warmup_steps=-5", "train.warmup_steps must be >= 0"), ("data.num_workers=-1", "data.num_workers"),
    ("triplet.knn=0", "triplet.knn must be >= 1"), ("train.encoder_lr=-1", "train.encoder_lr"),
    # NaN compares false with every bound, so it used to pass; inf is no learning rate either
    ("train.lr=nan", "train.lr must be a finite number, not nan"),
    ("train.encoder_lr=inf", "train.encoder_lr must be a finite number, not inf"),
    ("train.clip=-inf", "train.clip must be a finite number"),
    ("train.stop_signals=[SIGTERM,SIGKILL]", r"train.stop_signals: \['SIGKILL'\] not among SIGTERM"),
    ("train.requeue=always", "train.requeue must be auto or never"),
])
def test_nonsense_values_are_refused_before_launch(meld_shards, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/tiny/audio.yaml", [f"data.shards={meld_shards[0]}", override])
