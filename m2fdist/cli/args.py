"""Argument types the commands share, so every command reads a size, a part or a shards location alike."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from m2fdist.format.source import ShardError, check_location


def size(value: str) -> tuple[int, int]:
    """``320x180``: a frame size, both sides even and >= 16 (what H.264 encodes)."""
    try:
        w, h = (int(x) for x in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 320x180, got {value!r}") from None
    if w < 16 or h < 16 or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"size {value}: both sides must be even and >= 16")
    return w, h


def positive(kind: type) -> Callable[[str], Any]:
    """A number of ``kind`` that must be > 0."""
    def parse(value: str) -> Any:
        try:
            v = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {kind.__name__}: {value!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
        return v

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def part(value: str) -> tuple[int, int]:
    """``i/n``: slice i of n of a job that several machines share."""
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--part takes i/n, got {value!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--part {value}: need 0 <= i < n")
    return i, n


def shards_location(value: str) -> str:
    """What ``data.shards`` accepts: a folder, ``file://``, ``http(s)://``, ``s3://`` or ``gs://``; kept as written.

    Never a ``Path``: a Path folds ``http://host`` into ``http:/host``.
    """
    try:
        check_location(value)
    except ShardError as e:
        raise argparse.ArgumentTypeError(str(e).replace("data.shards=", "")) from None
    return value
