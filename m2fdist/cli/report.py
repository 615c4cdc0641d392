"""``m2fdist report RUNS``: the evaluation report of a pipeline run (:mod:`m2fdist.results.report`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from m2fdist.results.report import seed_folders, write_report, write_seed_report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", type=Path, help="a pipeline's runs folder (holding fusion/, fusion_T/, ...; or seed0/, "
                   "seed1/, ... for a multi-seed run: then each seed is reported and the rows are averaged)")


def run(args: argparse.Namespace) -> int:
    multi = not (args.runs / "fusion").is_dir() and not (args.runs / "text").is_dir() and seed_folders(args.runs)
    path = write_seed_report(args.runs) if multi else write_report(args.runs)
    print((args.runs / "report.md").read_text())
    print(f"report: {path}")
    return 0
