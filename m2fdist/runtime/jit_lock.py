"""Stale build locks of JIT-compiled extensions (DeepSpeed's ops) would hang every later launch.

``torch.utils.cpp_extension`` guards each JIT build with a ``lock`` file that names no owner: the first
process creates it (keeping it open), builds or finds the build up to date, then closes and deletes it;
every other process polls until it is gone, with no limit. A process killed while it holds the file (a job
cancelled during its first launch, a session or allocation ending, an OOM kill) leaves it behind, and from
then on every launch on that machine waits forever inside ``deepspeed.init_distributed`` (on CPU, for the
shared-memory comm op).

A lock is stale when it is owned by this user, no process on this machine has it open, and it is older
than ``stale_after`` seconds. The open-file check makes a slow build on this machine safe however long it
takes. On a network filesystem (a home directory on NFS, Lustre, a FUSE mount) a holder may be a process on
another node, which nothing here can see: such locks are left alone and reported once. One process per
node watches while the run starts and removes stale locks, saying so. (Works around torch 2.11's
``torch.utils.cpp_extension`` / ``FileBaton``, used by DeepSpeed 0.19's op builder.)
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STALE_AFTER = float(os.environ.get("M2FDIST_JIT_LOCK_STALE_S", 120))


def extensions_root() -> Path:
    """Where torch builds JIT extensions: $TORCH_EXTENSIONS_DIR, or the default root plus its device tag."""
    # here, not at the top: the build helpers only when a JIT lock is looked at
    from torch.utils.cpp_extension import _get_build_directory

    # DeepSpeed's CPU shm op is built first on every CPU launch; its folder's parent is the root.
    return Path(_get_build_directory("deepspeed_shm_comm", verbose=False)).parent


NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs", "9p")
_reported: set[Path] = set()


def network_fs(path: Path) -> str | None:
    """The filesystem type of ``path`` when it is shared over a network (or FUSE), else None."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    target, best, kind = str(Path(path).resolve()), "", ""
    for line in lines:
        fields = line.split()
        if len(fields) >= 3:
            mount = fields[1]
            if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                best, kind = mount, fields[2]
    return kind if kind in NETWORK_FS or kind.startswith("fuse") else None


def held_here(path: Path) -> bool:
    """Whether a process on this machine has ``path`` open (what a live lock holder does)."""
    target = str(path.resolve())
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if os.readlink(fd) == target:
                return True
        except OSError:  # gone meanwhile, or another user's process
            continue
    return False


def remove_stale_locks(root: Path, stale_after: float = STALE_AFTER, now: float | None = None,
                       settle: float = 0.5, fs_kind: str | None = None) -> list[Path]:
    """Delete the stale ``root/*/lock`` files; return the ones removed.

    A holder closes the file an instant before deleting it, so an unheld lock is looked at again after
    ``settle`` seconds: one that was being released is gone by then.
    """
    now = time.time() if now is None else now
    removed = []
    remote = fs_kind if fs_kind is not None else network_fs(root)  # fs_kind: what the caller knows (tests)
    for lock in root.glob("*/lock"):
        try:
            st = lock.stat()
            age = now - st.st_mtime
            if age <= stale_after or st.st_uid != os.getuid() or held_here(lock):
                continue
            if remote:
                if lock not in _reported:
                    _reported.add(lock)
                    print(f"m2fdist: the build lock {lock} looks stale ({age:.0f} s old) but sits on a {remote} "
                          "filesystem, where a process on another node may hold it: left alone (delete it by hand "
                          "if no node is building)", file=sys.stderr, flush=True)
                continue
            time.sleep(settle)
            if lock.stat().st_ino != st.st_ino or held_here(lock):
                continue
            lock.unlink()
        except (FileNotFoundError, PermissionError):  # released meanwhile, or not ours to delete
            continue
        print(f"m2fdist: removed the stale build lock {lock} ({age:.0f} s old, no process has it open: a build"
              " was killed)", file=sys.stderr, flush=True)
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
