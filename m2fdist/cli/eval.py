"""``m2fdist eval --model RUN/export --shards SHARDS [--split test] [--out scores.json]``: score an export."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from m2fdist.cli.args import shards_location
from m2fdist.common import atomic
from m2fdist.inference.evaluate import evaluate_export
from m2fdist.results.report import pct


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="a stage export, or a bundle folder (RUNS/model)")
    p.add_argument("--shards", type=shards_location, required=True,
                   help="shards the model reads (features for fusion): a folder or URL, as data.shards")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=0, help="0: the batch size the model was trained with")
    p.add_argument("--out", type=Path, default=None, help="also write the metrics (and predictions) as JSON here")


def run(args: argparse.Namespace) -> int:
    metrics, rows = evaluate_export(args.model, args.shards, args.split, args.batch_size)
    print(f"{args.split}: accuracy {pct(metrics['accuracy'])}, weighted F1 {pct(metrics['weighted_f1'])}, "
          f"macro F1 {pct(metrics['macro_f1'])} ({metrics['count']} utterances)")
    if args.out:
        atomic.write_json(args.out, {"model": str(args.model), "shards": str(args.shards), "split": args.split,
                                     "metrics": metrics, "predictions": rows})
    else:
        print(json.dumps({k: metrics[k] for k in ("accuracy", "weighted_f1", "macro_f1", "count")}))
    return 0
