"""A W&B sweep trial's folder: ``output_dir/sweep-<WANDB_SWEEP_ID>/<WANDB_RUN_ID>``, decided once, when the run
config is read (the launch of two trials is in ``tests/training/test_sweeps.py``)."""

from __future__ import annotations

import pytest

from m2fdist.config.errors import ConfigError
from m2fdist.config.load import read_config
from m2fdist.config.trial import trial_output_dir

pytestmark = pytest.mark.unit

AGENT = {"WANDB_SWEEP_ID": "k3v9x2ab", "WANDB_RUN_ID": "q7w1e5rt"}


def test_each_trial_of_a_sweep_has_its_own_folder():
    assert trial_output_dir("runs/meld/fusion", AGENT) == "runs/meld/fusion/sweep-k3v9x2ab/q7w1e5rt"
    other = trial_output_dir("runs/meld/fusion", {**AGENT, "WANDB_RUN_ID": "zz00aa11"})
    assert other == "runs/meld/fusion/sweep-k3v9x2ab/zz00aa11"
    # the same trial again (W&B resuming it) finds its own folder; a trial's saved config is not nested twice
    nested = "runs/meld/fusion/sweep-k3v9x2ab/q7w1e5rt"
    assert trial_output_dir(nested, AGENT) == nested


def test_outside_a_sweep_the_folder_is_the_configs():
    assert trial_output_dir("runs/meld/fusion", {}) == "runs/meld/fusion"
    # a user naming their W&B run (to continue it) keeps the folder the config names
    assert trial_output_dir("runs/meld/fusion", {"WANDB_RUN_ID": "q7w1e5rt"}) == "runs/meld/fusion"
    assert trial_output_dir("runs/meld/fusion", {"WANDB_SWEEP_ID": "k3v9x2ab"}) == "runs/meld/fusion"


@pytest.mark.parametrize("bad", ["../../etc", "a/b", "has space", "-lead", "x" * 65])
def test_an_id_that_is_not_a_wandb_id_never_names_a_folder(bad):
    with pytest.raises(ConfigError, match="WANDB_RUN_ID=.* is not a W&B id"):
        trial_output_dir("runs/x", {**AGENT, "WANDB_RUN_ID": bad})


def test_the_run_config_carries_the_trials_folder(monkeypatch):
    for name, value in AGENT.items():
        monkeypatch.setenv(name, value)
    cfg = read_config("configs/tiny/fusion.yaml", ["output_dir=runs/sweeps/fusion"])
    assert cfg.output_dir == "runs/sweeps/fusion/sweep-k3v9x2ab/q7w1e5rt"  # what every rank and --print-config see


def test_a_pipelines_stages_are_not_trials(monkeypatch, tmp_path):
    from m2fdist.pipeline import Pipeline, PipelineConfig

    for name, value in AGENT.items():
        monkeypatch.setenv(name, value)
    env = Pipeline(PipelineConfig(runs=str(tmp_path / "runs"))).env
    assert "WANDB_SWEEP_ID" not in env  # each stage trains into the folder the pipeline names and looks in
