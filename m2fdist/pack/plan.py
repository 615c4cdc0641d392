"""Which utterances go into which shard, decided before any clip is decoded.

The plan is a pure function of the raw tree and the options, so every machine that packs a ``--part``
of the corpus, and every rerun after a kill, computes the same shard names and contents. Dialogs are
never split across shards (dialog loaders group consecutive samples). Shards are capped by count and
by bytes; the byte cap works on a bound (duration × the encoder's rate ceiling + the WAV's exact rate),
because the real size is only known after encoding; the stats record the real size.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from m2fdist.common.media import SAMPLE_RATE, video_kbps
from m2fdist.raw.base import Corpus, Utterance

WAV_BYTES_PER_S = SAMPLE_RATE * 2
SAMPLE_OVERHEAD = 4096  # tar headers and the json member


@dataclass
class ShardPlan:
    split: str
    index: int
    utterances: list[Utterance] = field(default_factory=list)
    est_bytes: int = 0

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}"

    @property
    def dialogs(self) -> int:
        return len({u.dialog for u in self.utterances})


def estimate_bytes(u: Utterance, max_side: int, max_seconds: float, media: bool = True) -> int:
    if not media:
        return SAMPLE_OVERHEAD
    seconds = min(max(u.duration, 0.5), max_seconds)
    return int(seconds * (video_kbps(max_side) * 125 + WAV_BYTES_PER_S)) + SAMPLE_OVERHEAD


def plan_shards(
    corpus: Corpus, *, max_count: int, max_bytes: int, max_side: int, max_seconds: float, media: bool = True
) -> list[ShardPlan]:
    """Fill shards dialog by dialog, in split order; a new shard starts when either cap would be passed.

    A single dialog larger than a cap gets a shard of its own rather than being split.
    """
    if max_count < 1 or max_bytes < 1:
        raise ValueError("shard caps must be positive")
    plans: list[ShardPlan] = []
    for split, dialogs in corpus.splits.items():
        current = ShardPlan(split, 0)
        for dialog in dialogs:
            size = sum(estimate_bytes(u, max_side, max_seconds, media) for u in dialog)
            full = len(current.utterances) + len(dialog) > max_count or current.est_bytes + size > max_bytes
            if current.utterances and full:
                plans.append(current)
                current = ShardPlan(split, current.index + 1)
            current.utterances += dialog
            current.est_bytes += size
        if current.utterances:
            plans.append(current)
    return plans


def parse_part(part: str) -> tuple[int, int]:
    """``"i/n"`` → (i, n) with 0 <= i < n."""
    try:
        i, n = (int(x) for x in part.split("/"))
    except ValueError:
        raise ValueError(f"--part must look like i/n (e.g. 0/4), got {part!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--part {part}: need 0 <= i < n")
    return i, n


def select_part(plans: list[ShardPlan], part: tuple[int, int]) -> list[ShardPlan]:
    """Shard j of the whole plan belongs to part j mod n: parts interleave, so each gets every split."""
    i, n = part
    return [p for j, p in enumerate(plans) if j % n == i]


def fingerprint(plans: list[ShardPlan], options: dict) -> str:
    """Hash of the plan and the options that change shard bytes: a rerun with others must not mix them in."""
    h = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for p in plans:
        h.update(p.name.encode())
        for u in p.utterances:
            h.update(u.key.encode())
    return h.hexdigest()[:16]
