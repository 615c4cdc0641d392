"""``m2fdist pack DATASET --root RAW``: a raw MELD / IEMOCAP tree into WebDataset shards and their index.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from m2fdist.cli.args import positive
from m2fdist.common.modalities import PACKED
from m2fdist.format.index import INDEX_NAME, summary
from m2fdist.pack import PackOptions, pack
from m2fdist.raw import READERS


def add_arguments(k: argparse.ArgumentParser) -> None:
    k.add_argument("dataset", choices=sorted(READERS))
    k.add_argument("--root", type=Path, required=True, help="MELD.Raw or IEMOCAP_full_release folder")
    k.add_argument("--out", type=Path, default=None, help="shards folder (default: shards/<dataset>/)")
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
    k.add_argument("--dev-seed", type=int, default=0, help="IEMOCAP: seed of the 10%% dev dialogs")
    k.add_argument("--overwrite", action="store_true", help="replace shards packed with other options")
    k.add_argument("--index-only", action="store_true", help="only (re)build index.json from finished shards")
    k.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    out = args.out or Path("shards") / args.dataset
    options = PackOptions(max_side=args.max_side, max_seconds=args.max_seconds, long_clips=args.long_clips,
                          modalities=args.modalities)
    reader_options = {"dev_seed": args.dev_seed} if args.dataset == "iemocap" else {}
    index = pack(args.dataset, args.root, out, workers=args.workers, options=options,
                 max_count=args.shard_size, max_mb=args.shard_mb, part=args.part, context=args.context,
                 overwrite=args.overwrite, index_only=args.index_only, progress=not args.no_progress,
                 reader_options=reader_options)
    if index is not None:
        print(summary(index))
        print(f"index: {Path(out) / INDEX_NAME}")
    return 0
