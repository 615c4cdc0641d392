"""Atomic, durable writes: the one way m2fdist writes a file or folder whose presence means "done".

A completion marker (``final.json``, ``latest``, ``best``, ``pack.json``, ``index.json``, a shard's stats, an
export) must never be seen half-written, and two writers (two ``pack --part`` processes, two ranks) must not
share a temporary file. So every write goes to a temporary name unique to the writing process, is fsynced,
renamed over the target, and the folder is fsynced, so that a power loss leaves the old file or the new one,
never an empty pointer.

A full disk is reported the same way wherever it strikes (:func:`guard_space`): an error that says "no space
left" and names the path, with the partial output removed. torch's writer never says so itself (a full disk
during ``torch.save`` is ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos ...`` or
``basic_ios::clear: iostream error``, errno lost), so the filesystem's free space decides.
What is published gets the permissions an ordinary file or folder would get under the process's umask (0666 /
0777 less the umask), not the 0600 / 0700 of the temporaries ``tempfile`` makes: on a shared cluster folder a
colleague in the group must be able to read ``index.json`` and list an export, as they read the tars.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Below this many free bytes a write that failed without an errno (torch's C++ writer) failed for lack of space:
# a write that runs out fills the filesystem to its last block before it fails.
FULL_BELOW = 1 << 20
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class NoSpaceLeft(OSError):
    """A write ran out of disk space (or quota). An ``OSError`` with errno ENOSPC, so callers that handle
    ``OSError`` still do; its message names the path, what was being written and the space left."""

    def __init__(self, path: str | Path, what: str, cause: BaseException):
        free = free_bytes(path)
        left = f"{free / 2**20:.1f} MiB free" if free is not None else "free space unknown"
        said = (str(cause).splitlines() or [type(cause).__name__])[0][:200]
        super().__init__(errno.ENOSPC, f"no space left on device writing {what} to {path} ({left}; the writer "
                         f"said: {said}): free space there, then run again", str(path))

    def __str__(self) -> str:  # the message alone (OSError's own adds "[Errno 28]" and repeats the path)
        return str(self.strerror)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:  # a pack worker's error crosses to the parent whole
        return _no_space_as_said, (str(self.strerror), str(self.filename))


def _no_space_as_said(message: str, path: str) -> NoSpaceLeft:
    e = NoSpaceLeft.__new__(NoSpaceLeft)
    OSError.__init__(e, errno.ENOSPC, message, path)
    return e


def free_bytes(path: str | Path) -> int | None:
    """Bytes an unprivileged writer may still use on the filesystem holding ``path`` (its nearest existing
    ancestor), or None when it cannot be asked."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def is_no_space(exc: BaseException, path: str | Path) -> bool:
    """Whether ``exc``, raised writing under ``path``, means the disk (or quota) is full: ENOSPC / EDQUOT
    anywhere in its chain, or a write error without an errno on a filesystem with under :data:`FULL_BELOW` free."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _NO_SPACE or "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__
    if not isinstance(exc, Exception) or isinstance(exc, OSError) and exc.errno is not None:
        return False  # an interrupt, or an OSError that says what it is (EIO, EACCES, ...)
    free = free_bytes(path)
    return free is not None and free < FULL_BELOW


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def guard_space(path: str | Path, what: str, partial: Iterable[str | Path] = ()) -> Iterator[None]:
    """Write ``what`` under ``path`` inside this block: if it raises, the ``partial`` outputs are removed, and a
    full disk comes out as :class:`NoSpaceLeft` naming ``path`` (the free space is read before the removal)."""
    try:
        yield
    except BaseException as e:
        full = not isinstance(e, NoSpaceLeft) and is_no_space(e, path)
        error = NoSpaceLeft(path, what, e) if full else None
        for p in partial:
            _remove(Path(p))
        if error is not None:
            raise error from e
        raise


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders; the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def umask() -> int:
    """The process's umask, read without changing it where Linux says it (``/proc/self/status``); elsewhere
    set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _ordinary_file(fd: int) -> None:
    """Give a temporary made by ``tempfile.mkstemp`` (0600) the mode ``open()`` would have given it."""
    os.fchmod(fd, 0o666 & ~umask())


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (unique temporary file, fsync, rename, fsync of the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with guard_space(path, path.name, partial=[tmp]):
        with os.fdopen(fd, "wb") as f:
            _ordinary_file(f.fileno())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any, indent: int | None = 1) -> Path:
    return write_text(path, json.dumps(data, indent=indent, ensure_ascii=False))


def temp_path_for(final: str | Path) -> Path:
    """A fresh, empty file beside ``final`` that only this writer uses, to fill and then ``os.replace`` into place.

    Unique per writer (two ``m2fdist pack`` into one folder collided on a fixed ``{name}.tar.tmp``, one
    truncating the other's half-written shard), and named like every other temporary (``.*.tmp``).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.{_writer()}.", suffix=".tmp", dir=final.parent)
    try:
        _ordinary_file(fd)
    finally:
        os.close(fd)
    return Path(tmp)


def _writer() -> str:
    return f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"


def remove_dead_temporaries(folder: str | Path) -> list[Path]:
    """Remove the :func:`temp_path_for` temporaries in ``folder`` whose writer is a dead process of this host.

    A killed writer leaves its temporary behind; a live one (another pack into the same folder, on this host or
    another) is left alone: the name says which host and process wrote it.
    """
    removed = []
    host = socket.gethostname().replace(".", "_")
    for path in Path(folder).glob(".*.tmp"):
        writer = path.name[:-len(".tmp")].rsplit(".", 2)[-2] if path.name.count(".") >= 4 else ""
        who, _, pid = writer.rpartition("-")
        if who != host or not pid.isdigit():
            continue
        if not _alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return sorted(removed)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs; a zombie does not (in a container whose PID 1 reaps
    nothing, a killed writer stays a zombie for good)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def temp_dir_for(final: str | Path) -> Path:
    """A fresh folder beside ``final`` to fill before :func:`publish_dir` puts it in place."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(0o777 & ~umask())  # mkdtemp's 0700 would lock everyone else out of the published folder
    return tmp


def publish_dir(tmp: str | Path, final: str | Path) -> Path:
    """Move a completely written folder into place, replacing an earlier one.

    Every file in it is fsynced first. The earlier folder is renamed aside and deleted only after the new
    one is in place, so at every instant ``final`` is either absent, the old folder or the new one.
    """
    tmp, final = Path(tmp), Path(final)
    for p in tmp.rglob("*"):
        if p.is_file():
            with p.open("rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(tmp)
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
        os.replace(final, old / final.name)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def stray_temporaries(folder: str | Path) -> list[Path]:
    """Temporaries a killed writer left behind in ``folder`` (for cleaners and tests)."""
    return sorted(Path(folder).glob(".*.tmp"))
