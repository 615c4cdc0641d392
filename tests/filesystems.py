"""Real small filesystems for disk-full tests: a tmpfs of a given size, mounted (as root) and always unmounted.

A full disk is tested on a real full filesystem, never a mock: torch's writer, safetensors and Python's own
files each fail their own way there (torch's without an errno), which a mock would have to guess.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """``path`` as a fresh tmpfs of ``size`` (``mount -t tmpfs -o size=...``), unmounted on the way out, however
    the block ends. Mounting needs root (CAP_SYS_ADMIN); without it the test fails saying so."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a {size} tmpfs at {path} (disk-full tests need root): {r.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True)  # busy (a file still open): detach it now


def fill(path: Path, leave: int = 0) -> Path:
    """Fill the filesystem of ``path`` with one file until at most ``leave`` bytes are free."""
    filler = path / "filler"
    with filler.open("ab") as f:
        while (free := os.statvfs(path).f_bavail * os.statvfs(path).f_frsize) > leave:
            try:
                f.write(b"\0" * min(free - leave, 1 << 20))
                f.flush()
            except OSError:  # full before `leave`: the block rounding of the last write
                break
    return filler
