"""Stale build locks of JIT-compiled extensions (DeepSpeed's ops) would hang every later launch.

``torch.utils.cpp_extension`` guards each JIT build with a ``lock`` file that names no owner: the first
process creates it, builds (or finds the build up to date) and deletes it; every other process polls until
it is gone, with no limit. A process killed while it holds the file (a job cancelled during its first
launch, a session or allocation ending, an OOM kill) leaves it behind, and from then on every launch on
that machine waits forever inside ``deepspeed.init_distributed`` (on CPU, for the shared-memory comm op).

A build takes about a minute on two cores, and holding the lock only to find a build up to date takes
milliseconds, so a lock file older than ``stale_after`` seconds belongs to no live build. One process per
node watches the extension folders while the run starts and removes such a file, saying so.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STALE_AFTER = float(os.environ.get("M2FDIST_JIT_LOCK_STALE_S", 300))


def extensions_root() -> Path:
    """Where torch builds JIT extensions: $TORCH_EXTENSIONS_DIR, or the default root plus its device tag."""
    from torch.utils.cpp_extension import _get_build_directory

    # DeepSpeed's CPU shm op is built first on every CPU launch; its folder's parent is the root.
    return Path(_get_build_directory("deepspeed_shm_comm", verbose=False)).parent


def remove_stale_locks(root: Path, stale_after: float = STALE_AFTER, now: float | None = None) -> list[Path]:
    """Delete ``root/*/lock`` files older than ``stale_after`` seconds; return the ones removed."""
    now = time.time() if now is None else now
    removed = []
    for lock in root.glob("*/lock"):
        try:
            age = now - lock.stat().st_mtime
            if age <= stale_after:
                continue
            lock.unlink()
        except FileNotFoundError:  # released meanwhile
            continue
        print(f"m2fdist: removed the stale build lock {lock} ({age:.0f} s old; no build holds it that long, so"
              " a process was killed while building)", file=sys.stderr, flush=True)
        removed.append(lock)
    return removed


@contextmanager
def stale_lock_watch(root: Path | None = None, stale_after: float = STALE_AFTER, poll: float = 2.0,
                     enabled: bool = True) -> Iterator[None]:
    """Remove stale build locks now and, from a daemon thread, for as long as the block runs.

    The thread matters because the waiting happens inside torch on this process's main thread, and a lock
    that is young now (a build killed a minute ago) is only known to be stale later.
    """
    if not enabled:
        yield
        return
    root = extensions_root() if root is None else root
    stop = threading.Event()

    def watch() -> None:
        while True:
            remove_stale_locks(root, stale_after)
            if stop.wait(poll):
                return

    thread = threading.Thread(target=watch, name="m2fdist-jit-lock-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
