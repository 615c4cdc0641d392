"""Loading packed shards: safe decoding, rank/worker splitting with equal batch counts, collation."""

from m2fdist.data.collate import IGNORE_INDEX, collate_dialogs, collate_utterances
from m2fdist.data.decode import NUM_FRAMES, ShardDecodeError, decode_sample, sample_frames
from m2fdist.data.loader import LoaderConfig, ShardDataset, make_loader

__all__ = [
    "IGNORE_INDEX", "NUM_FRAMES", "LoaderConfig", "ShardDataset", "ShardDecodeError", "collate_dialogs",
    "collate_utterances", "decode_sample", "make_loader", "sample_frames",
]
