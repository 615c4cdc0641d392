"""``m2fdist peek SHARDS``: load one utterance batch and one dialog batch and show them: a check of the data path."""

from __future__ import annotations

import argparse

from m2fdist.cli.args import positive, shards_location
from m2fdist.data import LoaderConfig, make_loader
from m2fdist.format.index import load_index


def add_arguments(e: argparse.ArgumentParser) -> None:
    e.add_argument("shards", type=shards_location, help="a shards folder or URL, as data.shards")
    e.add_argument("--split", default="train")
    e.add_argument("--batch-size", type=positive(int), default=4)
    e.add_argument("--workers", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    names = load_index(args.shards)["label_names"]
    for level in ("utterance", "dialog"):
        config = LoaderConfig(level=level, batch_size=args.batch_size, num_workers=args.workers, train=False)
        loader = make_loader(args.shards, args.split, config, rank=0, world_size=1)
        batch = next(iter(loader))
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in batch.items() if hasattr(v, "shape"))
        print(f"{level} batch ({len(loader)} per epoch): {shapes}")
    first = batch["text"][0]
    labels = batch["labels"][0][batch["mask"][0]].tolist()
    print(f"dialog {batch['dialog'][0]}:")
    for text, label in zip(first, labels, strict=True):
        print(f"  [{names[label]:>8s}] {text}")
    return 0
