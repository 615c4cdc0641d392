"""Sweeps run every trial: two trials of a shipped sweep's command, as the W&B agent builds and starts them, into
the one ``output_dir`` the command names. Before, the second was refused (the first's run was in that folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from launching import ENV, ROOT, free_port, log_tail, run, sweep_command, sweep_sample

pytestmark = pytest.mark.launch

SWEEP_ID = "tst0swp1"


def _trial(run_id: str, pick: int, features: Path, out: Path, log: Path) -> tuple[int, dict]:
    """One trial: the agent's argv for sample ``pick`` and its environment (wandb 0.31 ``wandb_agent.py``
    sets WANDB_SWEEP_ID, WANDB_RUN_ID and WANDB_DIR); the tiny setup goes in as constant sweep parameters."""
    spec = yaml.safe_load((ROOT / "configs" / "sweeps" / "meld_fusion.yaml").read_text())
    _, sampled = sweep_sample("meld_fusion", pick)
    tiny = {"data.shards": str(features), "output_dir": str(out), "wandb.mode": "disabled",
            "data.eval_splits": ["dev"], "train.max_steps": 2}
    argv = sweep_command(spec, {**sampled, **tiny})
    assert argv[:2] == ["/usr/bin/env", "deepspeed"] and "--num_gpus" not in argv  # ranks from the node
    argv[argv.index("--config") + 1] = "configs/tiny/fusion.yaml"
    argv[2:2] = ["--master_port", str(free_port())]  # the only argument added: a free port, for parallel tests
    env = {**ENV, "WANDB_SWEEP_ID": SWEEP_ID, "WANDB_RUN_ID": run_id, "WANDB_DIR": str(ROOT), "LOCAL_SIZE": "1"}
    return run(argv, log, env=env, check=False), sampled


def test_two_trials_of_a_sweep_each_train_into_their_own_folder(tiny_features, tmp_path):
    out = tmp_path / "runs" / "meld_fusion"
    trials = {run_id: _trial(run_id, pick, tiny_features, out, tmp_path / f"{run_id}.log")
              for pick, run_id in enumerate(("trial0aa", "trial1bb"))}  # one after the other, as one agent runs
    for run_id, (rc, sampled) in trials.items():
        assert rc == 0, log_tail(tmp_path / f"{run_id}.log")
        folder = out / f"sweep-{SWEEP_ID}" / run_id
        final, saved = (json.loads((folder / name).read_text()) for name in ("final.json", "config.json"))
        assert final["step"] == 2 and final["world_size"] == 1
        assert saved["output_dir"] == str(folder)
        for key, value in sampled.items():
            section, field = key.split(".")
            assert saved[section][field] == value, key
    assert trials["trial0aa"][1] != trials["trial1bb"][1]  # two different samples
    assert sorted(p.name for p in out.iterdir()) == [f"sweep-{SWEEP_ID}"]  # nothing trained into the folder itself
