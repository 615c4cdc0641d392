"""``m2fdist tiny-text``: a tiny random RoBERTa and a tokenizer trained on the shards' own text (no hub needed)."""

from __future__ import annotations

import argparse
from pathlib import Path

from m2fdist.cli.args import positive, shards_location
from m2fdist.data.texts import shard_texts
from m2fdist.models.tiny_text import build_tiny_roberta


def add_arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("--shards", type=shards_location, required=True, help="a shards folder or URL, as data.shards")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--hidden", type=positive(int), default=32)
    t.add_argument("--layers", type=positive(int), default=2)
    t.add_argument("--vocab", type=positive(int), default=500)


def run(args: argparse.Namespace) -> int:
    texts = shard_texts(args.shards)
    build_tiny_roberta(args.out, texts, vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers)
    print(f"tiny RoBERTa (hidden {args.hidden}, {args.layers} layers) with a tokenizer trained on "
          f"{len(texts)} utterances: {args.out}")
    return 0
