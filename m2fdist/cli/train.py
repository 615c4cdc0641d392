"""``m2fdist train`` (``deepspeed launch/train.py``): one stage's training run.

    deepspeed [--hostfile H] [--num_gpus N] launch/train.py --config configs/meld/text.yaml [key=value ...]
    m2fdist train --config ... [key=value ...]                      (one process)
    accelerate launch --config_file configs/accelerate/zero2.yaml launch/train.py --config ...

Every config problem is found here, on every rank alike, before the process group starts (exit 2, one line);
a rank whose training raises ends the run with its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import os

from m2fdist.config.checks import check_data, check_model_paths
from m2fdist.config.help import add_config_arguments, show_config
from m2fdist.config.load import load_config, read_config
from m2fdist.config.schema import RunConfig
from m2fdist.runtime import process
from m2fdist.runtime.deepspeed_config import deepspeed_config
from m2fdist.training import runlock
from m2fdist.training.trainer import Trainer, check_resume


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, RunConfig(), "YAML run config (configs/<dataset>/<stage>.yaml)")


def run(args: argparse.Namespace) -> int:
    if args.print_config:
        show_config(read_config(args.config, args.overrides), check_data)
        return 0
    cfg = load_config(args.config, args.overrides)
    check_model_paths(cfg)
    process.single_process_env()
    ds_config, precision = deepspeed_config(cfg, int(os.environ["WORLD_SIZE"]))
    check_resume(cfg)
    runlock.claim(cfg.output_dir)  # one live run per output_dir, before anything is written there
    return process.run_in_group(lambda: Trainer(cfg, ds_config, precision).run(), "training")
