"""DeepSpeed's CPU allreduce buffers in /dev/shm are never unlinked: each launch leaks 66 MB per rank.

On CPU, ``deepspeed.init_distributed`` loads the shared-memory comm op, and every rank creates
``/dev/shm/deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>`` (DeepSpeed 0.19,
``csrc/cpu/comm/shm.cpp``; its ``shared_close`` is never called). The port differs between launches, so
the files pile up in RAM-backed tmpfs. Forty test suites' worth filled a 24 GB machine until compiles
crawled and launches hung. So each rank deletes its own buffer once every rank is past the last
collective, and one process per node removes orphans (no process has them open or mapped) left by runs
that were killed or never cleaned up, before it starts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SHM = Path("/dev/shm")
PREFIX = "deepspeed_allreduce_buffer"


def own_buffer(rank: int) -> Path:
    """This rank's buffer, named as shm.cpp names it."""
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return SHM / f"{PREFIX}_{os.getuid()}_{addr}_{port}_{rank}"


def release_own_buffer(rank: int) -> None:
    """Unlink this rank's buffer. Only after a barrier: peers open it by name until they are initialised."""
    own_buffer(rank).unlink(missing_ok=True)


def in_use(root: Path = SHM) -> set[str]:
    """Paths under ``root`` that a process on this machine has open or mapped."""
    prefix = f"{root}/"
    used: set[str] = set()
    for proc in Path("/proc").glob("[0-9]*"):
        # fds before maps: shm.cpp opens, maps, then closes, so one of the two always shows a live buffer.
        # Each fd on its own: one closing while we look (our own directory listing's) must not hide the rest.
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:  # gone meanwhile, or another user's process
            fds = []
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith(prefix):
                used.add(target)
        try:
            maps = (proc / "maps").read_text().splitlines()
        except OSError:
            continue
        for line in maps:
            path = line.split(maxsplit=5)[5:]
            if path and path[0].startswith(prefix):
                used.add(path[0].removesuffix(" (deleted)"))
    return used


def shared_mount(root: Path) -> str | None:
    """Why processes that use ``root`` may be invisible here (a mount shared with other containers), or None.

    A tmpfs that this mount namespace shares with others (``shared:``/``master:`` propagation in mountinfo,
    as with ``docker --ipc=host`` or a bind of the host's /dev/shm) can hold buffers of ranks in other
    containers, whose processes /proc does not show. ``M2FDIST_SHM_SHARED=1`` says so explicitly.
    """
    if os.environ.get("M2FDIST_SHM_SHARED", "") not in ("", "0"):
        return "M2FDIST_SHM_SHARED is set"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return "/proc/self/mountinfo is unreadable"
    best, tags = "", ""
    target = str(root.resolve())
    for line in lines:
        fields = line.split()
        if len(fields) < 7:
            continue
        mount = fields[4]
        if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, tags = mount, " ".join(fields[6:fields.index("-")] if "-" in fields else [])
    if "shared:" in tags or "master:" in tags:
        return f"{best} is shared with other mount namespaces ({tags})"
    return None


def remove_orphans(root: Path = SHM) -> list[Path]:
    """Delete this user's DeepSpeed buffers that provably no process uses; return them.

    Proof: the file is owned by this uid, and no process visible here has it open or mapped, on a mount no
    other container shares. Where that cannot be known, nothing is deleted and the reason is said once.
    """
    candidates = sorted(root.glob(f"{PREFIX}_{os.getuid()}_*"))
    if not candidates:
        return []
    shared = shared_mount(root)
    if shared:
        print(f"m2fdist: leaving {len(candidates)} DeepSpeed allreduce buffers in {root}: {shared}, so processes "
              "using them may not be visible here (delete them by hand when no run is active)", file=sys.stderr)
        return []
    used = in_use(root)
    removed, freed = [], 0
    for path in candidates:
        if str(path) in used:
            continue
        try:
            st = path.stat()
            if st.st_uid != os.getuid():
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        except PermissionError:  # another user's file after all (sticky /dev/shm): not ours to delete
            continue
        removed.append(path)
        freed += st.st_size
    if removed:
        print(f"m2fdist: removed {len(removed)} orphaned DeepSpeed allreduce buffers from {root},"
              f" {freed / 2**20:.0f} MB of RAM (DeepSpeed never deletes them)", file=sys.stderr, flush=True)
    return removed
