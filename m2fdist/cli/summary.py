"""``m2fdist summary SHARDS``: what a shards location's index.json says, in a few lines."""

from __future__ import annotations

import argparse

from m2fdist.cli.args import shards_location
from m2fdist.format.index import load_index, summary


def add_arguments(m: argparse.ArgumentParser) -> None:
    m.add_argument("shards", type=shards_location, help="a shards folder or URL, as data.shards")


def run(args: argparse.Namespace) -> int:
    print(summary(load_index(args.shards)))
    return 0
