"""``m2fdist extract`` (``deepspeed launch/extract.py``): dialog feature shards from the exported extractors.

    deepspeed --num_gpus N launch/extract.py --config configs/meld/extract.yaml [key=value ...]
    m2fdist extract --config ...                                             (one process)
"""

from __future__ import annotations

import argparse

from m2fdist.config.checks import check_extract_data
from m2fdist.config.help import add_config_arguments, show_config
from m2fdist.config.load import load_extract_config, read_extract_config
from m2fdist.config.schema import ExtractConfig
from m2fdist.inference.extract import run as extract
from m2fdist.runtime import process


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, ExtractConfig(), "YAML extraction config (configs/<dataset>/extract.yaml)")


def run(args: argparse.Namespace) -> int:
    if args.print_config:
        show_config(read_extract_config(args.config, args.overrides), check_extract_data)
        return 0
    cfg = load_extract_config(args.config, args.overrides)
    return process.run_in_group(lambda: extract(cfg) or 0, "extraction")
