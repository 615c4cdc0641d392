"""Packing raw corpora into WebDataset shards: plan, write, index."""

from m2fdist.pack.index import INDEX_NAME, load_index, packed_modalities, summary
from m2fdist.pack.run import pack
from m2fdist.pack.writer import PackOptions

__all__ = ["INDEX_NAME", "PackOptions", "load_index", "pack", "packed_modalities", "summary"]
