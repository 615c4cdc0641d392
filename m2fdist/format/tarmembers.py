"""The one writer of WebDataset samples into a tar: members named ``{key}.{ext}``, consecutive, read-only.

Both the packer (utterance shards) and extraction (dialog feature shards) write through it. It uses the
standard library's tarfile rather than webdataset's TarWriter so pack workers never import torch.
"""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import BinaryIO


def add_sample(tar: tarfile.TarFile, key: str, members: dict[str, bytes]) -> None:
    """Members of one sample, consecutive and named ``{key}.{ext}``: the layout WebDataset groups by key."""
    now = time.time()
    for ext, data in members.items():
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size, info.mtime, info.mode = len(data), now, 0o444
        tar.addfile(info, io.BytesIO(data))


def open_tar(fileobj_or_path: Path | str | BinaryIO) -> tarfile.TarFile:
    """A tar for writing in USTAR format (what webdataset and every tar reader accept)."""
    if isinstance(fileobj_or_path, Path | str):
        return tarfile.open(fileobj_or_path, "w", format=tarfile.USTAR_FORMAT)
    return tarfile.open(fileobj=fileobj_or_path, mode="w", format=tarfile.USTAR_FORMAT)
