"""``m2fdist pack DATASET --root RAW``: a raw MELD / IEMOCAP tree into WebDataset shards and their index.json;
``m2fdist pack manifest --manifest FILE``: anyone's labelled dialogs (CSV / JSONL) into the same shards."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from m2fdist.cli.args import positive
from m2fdist.common.modalities import PACKED
from m2fdist.format.index import INDEX_NAME, summary
from m2fdist.pack import PackOptions, pack
from m2fdist.raw import READERS
from m2fdist.raw.labelled import parse_labels


def add_arguments(k: argparse.ArgumentParser) -> None:
    k.add_argument("dataset", choices=sorted(READERS))
    k.add_argument("--root", type=Path, default=None, help="MELD.Raw or IEMOCAP_full_release folder")
    k.add_argument("--manifest", type=Path, default=None,
                   help="manifest: the CSV / JSONL of labelled utterances (predict's columns plus label and split)")
    k.add_argument("--labels", default=None,
                   help="manifest: the label set in id order (a,b,c); a row with another label is a recorded skip "
                        "(default: the labels the rows use, sorted)")
    k.add_argument("--dev-fraction", type=float, default=None,
                   help="manifest: hold out this seeded fraction of the train dialogs as dev (--dev-seed); rows "
                        "without a split are then train")
    k.add_argument("--out", type=Path, default=None,
                   help="shards folder (default: shards/<dataset>/, for a manifest shards/<its file name>/)")
    k.add_argument("--workers", type=positive(int), default=2, help="parallel encoding processes")
    k.add_argument("--max-side", type=positive(int), default=320,
                   help="re-encode video so its longer side is at most this (see bench/data_bench.py)")
    k.add_argument("--max-seconds", type=positive(float), default=60.0,
                   help="clips longer than this (MELD's wrongly cut ones) are trimmed or skipped")
    k.add_argument("--long-clips", choices=["trim", "skip"], default="trim")
    k.add_argument("--modalities", choices=PACKED, default=PACKED[0], metavar="{" + "|".join(PACKED) + "}",
                   help="text: json-only samples from the CSVs / transcripts alone; clips are not needed, "
                        "probed or decoded, and a missing clip is not a skip")
    k.add_argument("--shard-size", type=positive(int), default=200, help="max utterances per shard")
    k.add_argument("--shard-mb", type=positive(float), default=256.0, help="max (bounded) MB per shard")
    k.add_argument("--part", default="0/1", help="pack slice i of n (i/n) so machines can share a corpus")
    k.add_argument("--context", type=int, default=8, help="neighbouring utterances kept in each sample's json")
    k.add_argument("--dev-seed", type=int, default=0,
                   help="IEMOCAP: seed of the 10%% dev dialogs; manifest: of --dev-fraction's")
    k.add_argument("--overwrite", action="store_true", help="replace shards packed with other options")
    k.add_argument("--index-only", action="store_true", help="only (re)build index.json from finished shards")
    k.add_argument("--no-progress", action="store_true")


def reader_inputs(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """What the dataset's reader reads (a tree, or the manifest file) and its options; ValueError for a flag that
    does not fit the dataset (a manifest's --labels given for MELD would otherwise be ignored in silence)."""
    if args.dataset == "manifest":
        if args.manifest is None or args.root is not None:
            raise ValueError("pack manifest takes --manifest FILE (not --root)")
        return args.manifest, {"labels": parse_labels(args.labels), "dev_fraction": args.dev_fraction,
                               "dev_seed": args.dev_seed}
    if args.root is None or args.manifest is not None:
        raise ValueError(f"pack {args.dataset} takes --root (--manifest is for `m2fdist pack manifest`)")
    if args.labels is not None or args.dev_fraction is not None:
        raise ValueError(f"--labels and --dev-fraction are for manifests; "
                         f"{args.dataset}'s labels and splits are its own")
    return args.root, {"dev_seed": args.dev_seed} if args.dataset == "iemocap" else {}


def run(args: argparse.Namespace) -> int:
    root, reader_options = reader_inputs(args)
    out = args.out or Path("shards") / (root.stem if args.dataset == "manifest" else args.dataset)
    options = PackOptions(max_side=args.max_side, max_seconds=args.max_seconds, long_clips=args.long_clips,
                          modalities=args.modalities)
    index = pack(args.dataset, root, out, workers=args.workers, options=options,
                 max_count=args.shard_size, max_mb=args.shard_mb, part=args.part, context=args.context,
                 overwrite=args.overwrite, index_only=args.index_only, progress=not args.no_progress,
                 reader_options=reader_options)
    if index is not None:
        print(summary(index))
        print(f"index: {Path(out) / INDEX_NAME}")
    return 0
