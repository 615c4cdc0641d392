"""``m2fdist pipeline --config configs/<dataset>/pipeline.yaml``: every step in order (:mod:`m2fdist.pipeline`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from m2fdist.config.help import keys_help, print_config
from m2fdist.pipeline import Pipeline, PipelineConfig, load


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = keys_help(PipelineConfig())  # every key of PipelineConfig in --help
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--config", type=Path, required=True, help="configs/<dataset>/pipeline.yaml")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved pipeline config (YAML, then key=value overrides) and exit without "
                        "packing or launching anything")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the pipeline config")


def run(args: argparse.Namespace) -> int:
    cfg = load(args.config, args.overrides)
    if args.print_config:
        print_config(cfg)
        return 0
    Pipeline(cfg).run()
    return 0
