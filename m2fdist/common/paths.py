"""Telling a local path from a Hugging Face Hub id, the one way every loader of a model name does it."""

from __future__ import annotations

from pathlib import Path


def looks_local(value: str) -> bool:
    """Whether a model name is meant as a local path rather than a hub id (``org/name``).

    A path: it exists, starts with ``/``, ``./``, ``../``, ``.`` or ``~``, or has more than one ``/`` (a hub id
    has at most one). ``runs/roberta`` that does not exist is read as a hub id, as transformers reads it.
    """
    return (Path(value).expanduser().exists() or value.startswith(("/", ".", "~")) or value.count("/") > 1)
