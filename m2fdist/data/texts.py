"""The corpus's own text, read from packed shards: what a tiny local tokenizer is trained on."""

from __future__ import annotations

import json
from pathlib import Path

from m2fdist.data.stream import read_samples
from m2fdist.format.index import load_index
from m2fdist.format.source import ShardSource


def shard_texts(shards: str | Path) -> list[str]:
    """Every utterance's text at a shards location (a folder or any URL ``data.shards`` takes), all splits."""
    source = ShardSource(shards)
    index = load_index(source)
    names = [shard["url"] for entry in index["splits"].values() for shard in entry["shards"]]
    return [json.loads(sample["json"])["text"] for sample in read_samples(source, names)]
