"""Dialog feature shards as written: what ``m2fdist extract`` writes and the fusion stage reads.

One sample per dialog, keyed like its utterances' dialog: ``.json`` (dialog, utterance keys, labels),
``.text.npy`` [k, D_T], ``.audio.npy`` [k, D_A], ``.visual.npy`` [k, D_V] and ``.labels.npy`` [k]. Arrays
are ``.npy`` (``allow_pickle=False``): feature shards are as untrusted as any other shard.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from m2fdist.common import atomic
from m2fdist.format.tarmembers import add_sample, open_tar


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


class FeatureShardWriter:
    """Append dialog feature samples to one tar (written under a temporary name, renamed on close)."""
    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = atomic.temp_path_for(self.path)
        self.tar = open_tar(self.tmp)
        self.count = 0

    def write(self, key: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        members = {"json": json.dumps(meta, ensure_ascii=False).encode("utf-8")}
        members.update({f"{name}.npy": npy_bytes(a) for name, a in arrays.items()})
        add_sample(self.tar, key, members)
        self.count += 1

    def close(self) -> None:
        self.tar.close()
        self.tmp.replace(self.path)
