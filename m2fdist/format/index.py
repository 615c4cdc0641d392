"""``index.json``: what a shards location holds per split, and every source item that was left out.

Packing and extraction write it (:func:`write_index`, the one writer); loaders read it to know sample counts
without opening a tar, which is what lets every rank agree on the number of batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from m2fdist.common import atomic
from m2fdist.format.source import ShardSource

INDEX_NAME = "index.json"
FORMAT_VERSION = 1


def write_index(folder: Path, kind: str, dataset: str, label_names: list[str], splits: dict[str, Any],
                **fields: Any) -> dict[str, Any]:
    """Write ``folder/index.json`` atomically and return it: the one writer, for packed utterance shards
    (``kind="utterances"``) and dialog feature shards (``kind="features"``).

    The fields every reader relies on (format version, kind, dataset, the label names in id order, the splits with
    their shard lists) are set here, so the two writers cannot drift apart. ``label_names`` is where a run's labels
    come from (:func:`m2fdist.config.checks.resolve_labels`).
    """
    if kind not in ("utterances", "features"):
        raise ValueError(f"index kind must be utterances or features, not {kind!r}")
    index = {"format": FORMAT_VERSION, "kind": kind, "dataset": dataset, "label_names": list(label_names),
             "splits": splits, **fields}
    atomic.write_json(Path(folder) / INDEX_NAME, index)
    return index


def load_index(shards: str | Path | Any) -> dict[str, Any]:
    """The index of a shards location (a folder, a URL or a ``ShardSource``), every shard name checked.

    A clear error when packing has not finished there; shard names that are not plain file names under
    the location (a ``pipe:`` command, an absolute path, ``..``) are refused before anything opens them.
    """
    source = shards if isinstance(shards, ShardSource) else ShardSource(shards)
    index = source.read_index()
    if index.get("format") != FORMAT_VERSION:
        raise ValueError(f"{source.url(INDEX_NAME)}: shard format {index.get('format')} is not {FORMAT_VERSION}; "
                         "repack")
    return index


def packed_modalities(index: dict[str, Any]) -> tuple[str, ...]:
    """What the samples hold: ("text",) for json-only shards; indexes written before the option hold all three."""
    return tuple(index.get("options", {}).get("modalities", "text,audio,visual").split(","))


def summary(index: dict[str, Any]) -> str:
    """A few lines a person reads after packing."""
    opts = index["options"]
    if packed_modalities(index) == ("text",):
        lines = [f"{index['dataset']} shards (text only)"]
    else:
        lines = [f"{index['dataset']} shards (max side {opts['max_side']} px)"]
    for split, e in index["splits"].items():
        mb = sum(s["bytes"] for s in e["shards"]) / 2**20
        labels = ", ".join(f"{k} {v}" for k, v in e["labels"].items())
        lines.append(f"  {split:5s} {e['samples']:6d} utterances  {e['dialogs']:5d} dialogs  "
                     f"{len(e['shards']):4d} shards  {mb:8.1f} MB   {labels}")
    lines.append(f"  skipped {len(index['skipped'])}: " + (
        ", ".join(f"{r} ×{n}" for r, n in index["skipped_by_reason"].items()) or "none"))
    if index["trimmed"]:
        lines.append(f"  trimmed to {index['options']['max_seconds']:g}s: {len(index['trimmed'])} clips")
    return "\n".join(lines)
