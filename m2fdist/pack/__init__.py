"""Packing raw corpora into WebDataset shards: plan, write, index."""

from m2fdist.pack.run import pack
from m2fdist.pack.writer import PackOptions

__all__ = ["PackOptions", "pack"]
