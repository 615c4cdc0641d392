"""A diverging run stops: its loss going NaN ends the run on every rank at the same step with exit code 1 and a
message that says what to change; nothing of that step is evaluated, saved, marked best or reported final."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from launching import ENV, concurrently, deepspeed, log_tail, records

from m2fdist.config.errors import ConfigError
from m2fdist.config.load import load_config
from m2fdist.runtime.deepspeed_config import deepspeed_config
from m2fdist.training import checkpoint
from m2fdist.training.trainer import NAN_ENV


@pytest.mark.launch
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


SKIP = ["data.batch_size=1", "train.max_steps=6", "train.save_every=1", "train.keep_last=10", "train.log_every=1",
        "data.eval_splits=[dev]", "wandb.mode=disabled", "train.nonfinite=skip"]


def _tensors(obj: Any, at: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a checkpoint file's nested dicts and lists, by its path."""
    if isinstance(obj, torch.Tensor):
        return {at: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list | tuple) else ()
    return {k: v for key, value in items for k, v in _tensors(value, f"{at}/{key}").items()}


def _saved(tag: Path) -> dict[str, torch.Tensor]:
    """A DeepSpeed checkpoint's weights (bf16 module and fp32 master partitions) and optimizer state, every rank."""
    out = {}
    for f in sorted(tag.glob("*.pt")):
        state = torch.load(f, map_location="cpu", weights_only=False)
        kept = {k: state[k] for k in ("module", "optimizer_state_dict", "optimizer", "lr_scheduler") if k in state}
        out.update({f"{f.name}{k}": v for k, v in _tensors(kept).items()})
    return out


@pytest.mark.launch
def test_a_poisoned_step_is_skipped_and_a_diverged_run_still_stops(tiny_features, tmp_path):
    """train.nonfinite=skip, ZeRO-2 bf16, 2 ranks: rank 0's loss is NaN at step 3 only. The step is skipped on
    both ranks (the weights, master weights, Adam moments and schedule saved at step 3 are bit for bit those of
    step 2), counted, and training goes on to a finite model. A run that diverges for good (lr 1e30, fp32) skips
    train.max_skips_in_row steps, then stops as train.nonfinite=stop would."""
    out, log = tmp_path / "poisoned", tmp_path / "poisoned.log"
    bad, bad_log = tmp_path / "diverged", tmp_path / "diverged.log"
    rc, rc_bad = concurrently(
        lambda: deepspeed("launch/train.py", "configs/tiny/fusion.yaml",
                          [f"data.shards={tiny_features}", f"output_dir={out}", *SKIP, "precision=bf16",
                           "deepspeed=configs/ds/zero2.json"], log, env={**ENV, NAN_ENV: "3"}, check=False),
        lambda: deepspeed("launch/train.py", "configs/tiny/fusion.yaml",
                          [f"data.shards={tiny_features}", f"output_dir={bad}", *SKIP, "precision=fp32",
                           "deepspeed=configs/ds/zero2_fp32.json", "train.lr=1e30", "train.clip=0",
                           "train.max_skips_in_row=2"], bad_log, check=False))
    assert rc == 0, log_tail(log)
    final = json.loads((out / "final.json").read_text())
    assert final["step"] == 6 and final["nonfinite_skipped_steps"] == [3]
    rows = records(out)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert rows[2]["skipped"] == "nonfinite" and rows[2]["loss"] is None
    assert [r["nonfinite_skips"] for r in rows] == [0, 0, 1, 1, 1, 1]
    assert all(math.isfinite(r["loss"]) for r in rows if r["step"] != 3)
    assert "step 3: the loss (nan)" in log.read_text() and "skipped, no weight update (1 in a row" in log.read_text()
    ck = out / "checkpoints"
    before, skipped, after = (_saved(ck / f"step{s:08d}") for s in (2, 3, 4))
    assert before.keys() == skipped.keys() and len(before) > 10
    assert all(torch.equal(before[k], skipped[k]) for k in before)  # no weight, optimizer or schedule change
    assert not all(torch.equal(skipped[k], after[k]) for k in skipped)  # ... while step 4 trained
    assert all(torch.isfinite(t).all() for t in _saved(ck / "step00000006").values() if t.is_floating_point())

    assert rc_bad != 0, log_tail(bad_log)
    text = bad_log.read_text(errors="replace")
    assert "3 steps in a row (train.max_skips_in_row=2)" in text and text.count("failed: rank") == 2
    assert not (bad / "final.json").exists()
    assert [r.get("skipped") for r in records(bad)][-2:] == ["nonfinite", "nonfinite"]


@pytest.mark.unit
def test_skip_needs_an_optimizer_that_skips(tiny_features):
    """ZeRO-0 in fp32 applies every step (torch's AdamW takes the NaN): skip is refused there, before launch."""
    shards = f"data.shards={tiny_features}"
    cfg = load_config("configs/tiny/fusion.yaml", [shards, "train.nonfinite=skip", "precision=fp32",
                                                   "deepspeed=configs/ds/zero0_fp32.json"])
    with pytest.raises(ConfigError, match="ZeRO stage 0"):
        deepspeed_config(cfg, world_size=2, device="cpu")
    for overrides in (["deepspeed=configs/ds/zero2_fp32.json", "precision=fp32"], ["precision=bf16"]):
        deepspeed_config(load_config("configs/tiny/fusion.yaml", [shards, "train.nonfinite=skip", *overrides]),
                         world_size=2, device="cpu")
    with pytest.raises(ConfigError, match="train.nonfinite must be stop or skip"):
        load_config("configs/tiny/fusion.yaml", [shards, "train.nonfinite=maybe"])
