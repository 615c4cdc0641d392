"""A W&B sweep trial trains into a folder of its own: ``output_dir/sweep-<WANDB_SWEEP_ID>/<WANDB_RUN_ID>``.

Every command in ``configs/sweeps/*.yaml`` names the same config, so every trial had the same ``output_dir``, and
the fresh-run check refused the second trial of every sweep. The agent (wandb 0.31, ``wandb_agent.py``) puts the
sweep's id in ``WANDB_SWEEP_ID`` and the trial's run id in ``WANDB_RUN_ID`` of each trial's environment; the
command line cannot carry them (its ``${envvar:NAME}`` macro is expanded once, before the agent sets
``WANDB_RUN_ID``, and then stays in the command for every later trial). A trial re-run under the same run id
(W&B resuming a preempted trial) finds its own folder again, so ``resume=auto`` continues it.

This is the one place the folder is decided: :func:`m2fdist.config.load.read_config` applies it to every run
config, so every rank, ``--print-config`` and the saved ``config.json`` show the trial's folder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePath

from m2fdist.config.errors import ConfigError

SWEEP_ENV, RUN_ENV = "WANDB_SWEEP_ID", "WANDB_RUN_ID"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # W&B ids are short alphanumerics; a path is never one


def trial_output_dir(output_dir: str, env: Mapping[str, str]) -> str:
    """``output_dir`` for this process: nested per trial when a W&B sweep agent started it, else unchanged.

    Only the pair counts: ``WANDB_RUN_ID`` alone is a user naming their W&B run (resume into the same run),
    which keeps the folder the config names. Already nested (``.../sweep-S/R``, a config saved by a trial): kept.
    """
    sweep, run = env.get(SWEEP_ENV, ""), env.get(RUN_ENV, "")
    if not (sweep and run):
        return output_dir
    for name, value in ((SWEEP_ENV, sweep), (RUN_ENV, run)):
        if not _ID.fullmatch(value):  # the id becomes a folder name: no "/", "..", or spaces
            raise ConfigError(f"{name}={value[:80]!r} is not a W&B id (letters, digits, '_', '-'), so it cannot "
                              "name this sweep trial's folder under output_dir")
    tail = (f"sweep-{sweep}", run)
    if PurePath(output_dir).parts[-2:] == tail:
        return output_dir
    return str(PurePath(output_dir, *tail))
