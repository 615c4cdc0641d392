"""A diverging run stops: its loss going NaN ends the run on every rank at the same step with exit code 1 and a
message that says what to change; nothing of that step is evaluated, saved, marked best or reported final."""

from __future__ import annotations

import pytest
from launching import deepspeed, log_tail

from m2fdist.training import checkpoint

pytestmark = pytest.mark.launch


def test_a_run_whose_loss_goes_nan_stops_and_ships_nothing(tiny_features, tmp_path):
    out, log = tmp_path / "run", tmp_path / "run.log"
    rc = deepspeed("launch/train.py", "configs/tiny/fusion.yaml",
                   [f"data.shards={tiny_features}", f"output_dir={out}", "train.lr=1e30", "train.clip=0",
                    "data.batch_size=1", "train.max_steps=6", "train.save_every=1", "train.eval_every=1",
                    "data.eval_splits=[dev]", "wandb.mode=disabled", "precision=fp32"], log, check=False)
    text = log.read_text(errors="replace")
    assert rc != 0, log_tail(log)
    assert "training stopped: step" in text and "is not finite on some rank" in text and "train.lr" in text
    assert text.count("failed: rank") == 2  # each rank said so (one policy), neither hung in a collective
    assert not (out / "final.json").exists()  # the run is not a finished run
    bad = int(text.split("training stopped: step ")[1].split(":")[0])
    assert bad >= 2  # step 1's loss is computed before any update, so it is finite
    saved = checkpoint.complete_tags(out / "checkpoints")
    assert saved and all(int(t[4:]) < bad for t in saved)  # nothing of the diverged step was saved
    best = checkpoint.read_pointer(out / "checkpoints", "best")
    assert best is None or int(best[4:]) < bad
