"""Where shards live and how their bytes are read: the one place that opens a shard location.

Shards and their ``index.json`` come from anyone, so a location is data, never a command:

- ``data.shards`` is what the user wrote: a local folder (or ``file://``), an ``http(s)://`` URL, or an
  ``s3://`` / ``gs://`` URL read through the cloud CLI the user names (``data.s3_command``,
  ``data.gs_command``: an argv template with ``{url}``, run without a shell). Anything else, ``pipe:``
  included, is refused: :data:`SCHEMES` is the allow-list.
- Shard names inside ``index.json`` are plain relative file names under that location (no scheme, no
  absolute path, no ``..``), joined onto it; so an index can never pick the scheme, the host or a command.
- Tars are read here, not by webdataset's URL opener (which runs ``pipe:`` URLs through a shell and accepts
  gzip/bz2/xz tars): compressed tars are refused unless ``allow_compressed``, and a member larger than
  ``max_member_mb`` is refused before it is read. Every error names the shard (and the member).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

SCHEMES = ("", "file", "http", "https", "s3", "gs")  # "" is a local path; nothing else is ever opened
INDEX_NAME = "index.json"
MAX_INDEX_BYTES = 256 * 2**20
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
# tar's first bytes when compressed: gzip, bzip2, xz, zstd (tarfile's "r|*" would open the first three)
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


class ShardError(RuntimeError):
    """A shard (or its index) that cannot be trusted or read; the message names the shard."""


@dataclass(frozen=True)
class ReadPolicy:
    """Bounds on what a shard may make a reader do, and what training does with a bad shard."""
    max_member_mb: float = 64.0  # one tar member (a clip, a WAV, a feature array)
    allow_compressed: bool = False  # gzip/bzip2/xz tars: refused unless the user opts in
    max_clip_mpixels: float = 4000.0  # a clip's frames × height × width, in millions (60 s of 1080p30 ≈ 3700)
    max_audio_seconds: float = 120.0  # a sample's WAV
    train_bad_shards: str = "error"  # or "skip": training records the bad shard and goes on (evaluation errors)
    skip_log: str | None = None  # where training appends its recorded skips (JSON lines)
    s3_command: str = "aws s3 cp {url} -"
    gs_command: str = "gcloud storage cat {url}"

    def __post_init__(self) -> None:
        if self.train_bad_shards not in ("error", "skip"):
            raise ValueError(f"train_bad_shards must be 'error' or 'skip', not {self.train_bad_shards!r}")
        for name in ("max_member_mb", "max_clip_mpixels", "max_audio_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        for scheme in ("s3", "gs"):
            if "{url}" not in shlex.split(getattr(self, f"{scheme}_command")):
                raise ValueError(f"{scheme}_command must hold {{url}} as one argument")

    @property
    def max_member_bytes(self) -> int:
        return int(self.max_member_mb * 2**20)


def scheme_of(location: str) -> str:
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", location)
    if m is None or (len(m.group(1)) == 1 and location[1:3] in (":\\", ":/")):  # a Windows drive is local
        return ""
    return m.group(1).lower()


def check_location(location: str) -> str:
    """The scheme of a user-written ``data.shards``, or ShardError when it is not on the allow-list."""
    scheme = scheme_of(str(location))
    if scheme not in SCHEMES:
        raise ShardError(f"data.shards={location}: scheme {scheme}: is not allowed (allowed: a local folder, "
                         f"{', '.join(s + '://' for s in SCHEMES if s)}); a shard location is never a command")
    if scheme and not str(location).startswith(f"{scheme}://"):
        raise ShardError(f"data.shards={location}: write {scheme}://... (a URL), not {scheme}:...")
    return scheme


def check_name(name: Any, where: str) -> str:
    """A shard name from an index: a plain relative file name, never a URL, an absolute path or ``..``."""
    if not isinstance(name, str) or not name:
        raise ShardError(f"{where}: shard name {name!r} is not a file name")
    parts = name.split("/")
    if scheme_of(name) or ":" in name or "\\" in name or not all(_NAME.fullmatch(p) for p in parts) or \
            any(p in (".", "..") for p in parts) or PurePosixPath(name).is_absolute():
        raise ShardError(f"{where}: shard name {name!r} is not a plain file name under the shards folder "
                         "(no scheme, no absolute path, no '..'); refusing to open it")
    return name


class ShardSource:
    """A shards location (``data.shards``) and the policy for reading it."""
    def __init__(self, location: str | Path, policy: ReadPolicy | None = None):
        self.location = str(location)
        self.scheme = check_location(self.location)
        self.policy = policy or ReadPolicy()
        base = self.location[len("file://"):] if self.scheme == "file" else self.location
        self.base = base.rstrip("/") if self.scheme else base

    def __repr__(self) -> str:
        return f"ShardSource({self.location!r})"

    def url(self, name: str) -> str:
        """Where shard ``name`` (already checked) lives, for messages and for opening."""
        return str(Path(self.base) / name) if self.scheme in ("", "file") else f"{self.base}/{name}"

    def open(self, name: str) -> IO[bytes]:
        """A binary stream of file ``name`` under the location, by the location's own scheme only."""
        check_name(name, self.location)
        url = self.url(name)
        if self.scheme in ("", "file"):
            try:
                return open(url, "rb")  # noqa: SIM115 (the caller closes it)
            except OSError as e:
                raise ShardError(f"{url}: cannot open ({e.strerror})") from e
        if self.scheme in ("http", "https"):
            try:
                return urllib.request.urlopen(url, timeout=60)  # noqa: S310 (scheme checked against SCHEMES)
            except (urllib.error.URLError, OSError) as e:
                raise ShardError(f"{url}: cannot fetch ({getattr(e, 'reason', e)})") from e
        return _CommandStream(self._command(url), url)

    def _command(self, url: str) -> list[str]:
        template = self.policy.s3_command if self.scheme == "s3" else self.policy.gs_command
        return [url if arg == "{url}" else arg for arg in shlex.split(template)]

    def read_index(self) -> dict[str, Any]:
        """``index.json`` of the location, size-capped, with every shard name checked."""
        where = self.url(INDEX_NAME)
        if self.scheme in ("", "file") and not Path(where).is_file():
            raise FileNotFoundError(
                f"{where} not found: pack the corpus first (`m2fdist pack ...`), or finish all --part runs")
        with self.open(INDEX_NAME) as f:
            data = f.read(MAX_INDEX_BYTES + 1)
        if len(data) > MAX_INDEX_BYTES:
            raise ShardError(f"{where}: larger than {MAX_INDEX_BYTES >> 20} MB; not an m2fdist index")
        try:
            index = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ShardError(f"{where}: not UTF-8 JSON ({e})") from e
        except RecursionError:
            raise ShardError(f"{where}: JSON nested too deeply; not an m2fdist index") from None
        if not isinstance(index, dict) or not isinstance(index.get("splits"), dict):
            raise ShardError(f"{where}: not an m2fdist index (no splits)")
        for split, entry in index["splits"].items():
            for shard in entry.get("shards", []):
                check_name(shard.get("url") if isinstance(shard, dict) else shard, f"{where} split {split}")
        return index

    def members(self, name: str) -> Iterator[tuple[str, bytes]]:
        """(member name, bytes) of tar shard ``name``, in order, bounded by the policy."""
        url = self.url(name)
        with self.open(name) as raw:
            stream = _Peek(raw)
            head = stream.peek(6)
            kind = next((k for magic, k in _COMPRESSED.items() if head.startswith(magic)), None)
            if kind == "zstd" or (kind and not self.policy.allow_compressed):
                raise ShardError(f"{url}: a {kind}-compressed tar; m2fdist reads plain tars "
                                 "(set data.allow_compressed=true to read gzip/bzip2/xz)")
            cap = self.policy.max_member_bytes
            try:
                with tarfile.open(fileobj=stream, mode="r|*" if kind else "r|") as tar:
                    for info in tar:
                        if not info.isreg():
                            continue
                        if info.size > cap:
                            raise ShardError(f"{url}: member {info.name} is {info.size / 2**20:.1f} MB, past "
                                             f"data.max_member_mb={self.policy.max_member_mb:g}")
                        data = tar.extractfile(info).read()
                        if len(data) != info.size:
                            raise ShardError(f"{url}: truncated inside member {info.name}")
                        yield info.name, data
                        tar.members = []  # a stream has no use for the member list; keep memory flat
            except (tarfile.TarError, EOFError, OSError) as e:
                raise ShardError(f"{url}: not a readable tar, or truncated ({e})") from e


class _Peek:
    """A read-only stream whose first bytes can be looked at before tarfile reads them."""
    def __init__(self, raw: IO[bytes]):
        self.raw, self.buf = raw, b""

    def peek(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.raw.read(n - len(self.buf))
            if not chunk:
                break
            self.buf += chunk
        return self.buf[:n]

    def read(self, n: int = -1) -> bytes:
        if self.buf:
            head, self.buf = (self.buf, b"") if n < 0 or n >= len(self.buf) else (self.buf[:n], self.buf[n:])
            return head + (self.raw.read(n - len(head)) if n < 0 or n > len(head) else b"")
        return self.raw.read(n)


class _CommandStream:
    """stdout of a cloud CLI (argv, no shell) as a stream; a failed command is a ShardError on close."""
    def __init__(self, argv: list[str], url: str):
        self.argv, self.url = argv, url
        self.stderr = tempfile.TemporaryFile()  # a file, not a pipe: a chatty CLI cannot block on it
        try:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.stderr)  # noqa: S603
        except OSError as e:
            self.stderr.close()
            raise ShardError(f"{url}: cannot run {argv[0]} ({e.strerror}); set data.{url[:2]}_command") from e

    def read(self, n: int = -1) -> bytes:
        return self.proc.stdout.read(n)

    def __enter__(self) -> _CommandStream:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        finished = exc_type is None
        if not finished:
            self.proc.kill()
        self.proc.stdout.close()
        code = self.proc.wait()
        self.stderr.seek(0)
        err = self.stderr.read().decode("utf-8", "replace").strip()
        self.stderr.close()
        if finished and code != 0:
            raise ShardError(f"{self.url}: {shlex.join(self.argv)} exited with {code}: {err[-300:]}")
