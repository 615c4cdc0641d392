"""``index.json``: what the shards hold per split and every source item that was left out.

Built only from the plan (reader skips) and the per-shard stats files (counts, media skips), so any
machine can rebuild it once all shards are finished. Loaders read it to know sample counts without
opening a tar, which is what lets every rank agree on the number of batches.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from m2fdist.labels import LABELS
from m2fdist.pack.writer import stats_path

INDEX_NAME = "index.json"
FORMAT_VERSION = 1


def build_index(out: Path, plan_file: dict[str, Any]) -> dict[str, Any]:
    dataset = plan_file["dataset"]
    splits: dict[str, dict[str, Any]] = {}
    skipped = list(plan_file["skipped"])
    trimmed: list[dict] = []
    for shard in plan_file["shards"]:
        stats = json.loads(stats_path(out, shard["name"]).read_text())
        entry = splits.setdefault(shard["split"], {"shards": [], "samples": 0, "dialogs": 0, "labels": Counter()})
        entry["shards"].append({"url": stats["shard"], "samples": stats["count"], "dialogs": stats["dialogs"],
                                "bytes": stats["bytes"]})
        entry["samples"] += stats["count"]
        entry["dialogs"] += stats["dialogs"]
        entry["labels"].update(stats["labels"])
        skipped += stats["skipped"]
        trimmed += stats["trimmed"]
    for entry in splits.values():
        entry["labels"] = {name: entry["labels"].get(name, 0) for name in LABELS[dataset]}
    reasons = Counter(s["reason"].split(" (")[0] for s in skipped)
    return {
        "format": FORMAT_VERSION,
        "dataset": dataset,
        "label_names": list(LABELS[dataset]),
        "options": plan_file["options"],
        "fingerprint": plan_file["fingerprint"],
        "splits": splits,
        "skipped": skipped,
        "skipped_by_reason": dict(reasons.most_common()),
        "trimmed": trimmed,
    }


def load_index(shards: str | Path | Any) -> dict[str, Any]:
    """The index of a shards location (a folder, a URL or a ``ShardSource``), every shard name checked.

    A clear error when packing has not finished there; shard names that are not plain file names under
    the location (a ``pipe:`` command, an absolute path, ``..``) are refused before anything opens them.
    """
    from m2fdist.data.source import ShardSource  # here, not at the top: m2fdist.data imports this module

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
