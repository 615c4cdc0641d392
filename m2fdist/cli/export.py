"""``m2fdist export RUN``: one safetensors model from a stage's sharded checkpoint (``--bundle``: a bundle)."""

from __future__ import annotations

import argparse
from pathlib import Path

from m2fdist.inference.export import export
from m2fdist.results.bundle import write_bundle


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="a stage's output_dir (with --bundle: a pipeline's runs folder)")
    p.add_argument("--tag", default="best", help="best, latest, or a checkpoint tag")
    p.add_argument("--out", type=Path, default=None, help="default: RUN/export (with --bundle: RUN/model)")
    p.add_argument("--bundle", action="store_true", help="(re)write the bundle of a pipeline's runs folder from "
                   "its stage exports: what predict and M2FNet.from_pretrained load, with its model card (scores "
                   "from RUN/report.json when there is one)")


def run(args: argparse.Namespace) -> int:
    print(write_bundle(args.run, args.out) if args.bundle else export(args.run, args.tag, args.out))
    return 0
