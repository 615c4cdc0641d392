"""Building ``index.json`` after packing: only from the plan (reader skips) and the per-shard stats files
(counts, media skips), so any machine can rebuild it once all shards are finished.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from m2fdist.format.index import write_index
from m2fdist.pack.writer import stats_path


def build_index(out: Path, plan_file: dict[str, Any]) -> dict[str, Any]:
    """``out/index.json`` from the plan and every finished shard's stats; returns it."""
    dataset = plan_file["dataset"]
    names = plan_file["labels"]  # the reader's label set, in label_id order
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
        entry["labels"] = {name: entry["labels"].get(name, 0) for name in names}
    reasons = Counter(s["reason"].split(" (")[0] for s in skipped)
    return write_index(out, "utterances", dataset, names, splits, options=plan_file["options"],
                       fingerprint=plan_file["fingerprint"], skipped=skipped,
                       skipped_by_reason=dict(reasons.most_common()), trimmed=trimmed)
