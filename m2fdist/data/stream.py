"""Who reads what: spreading shards over ranks and dataloader workers with equal batch counts.

Collective training hangs if one rank runs out of batches before the others, and shards are uneven
(dialogs are never split, and packing skips bad clips). So the number of batches is fixed up front from
``index.json``, not from what a rank happens to read:

- training: every rank yields ``units // (world × batch)`` batches per epoch; each worker streams its
  shards over and over (reshuffled each pass) until it has produced its share, so a worker with
  smaller shards repeats some units instead of stopping early;
- evaluation: each shard is read by exactly one slot, once (:func:`eval_layout` deals whole shards,
  largest first, to the least-loaded slot), so every unit is read once in all; each rank then pads its
  workers' streams, with rows marked invalid, to the same number of batches on every rank.

A "unit" is an utterance or, for dialog-level loading, a whole dialog. A slot is one worker of one
rank: S = world × workers. Every shard is checked against the count its index entry promises: a
truncated, short or overfull shard is an error naming it (training may instead record it and go on,
``ReadPolicy.train_bad_shards="skip"``).
"""

from __future__ import annotations

import json
import random
import re
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m2fdist.format.source import ShardError, ShardSource

_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's rule: the key ends at the first dot


@dataclass(frozen=True)
class Slot:
    index: int
    count: int


def train_batches_per_rank(units: int, world: int, batch_size: int) -> int:
    return units // (world * batch_size)


def worker_share(total: int, workers: int, worker: int) -> int:
    """Split ``total`` batches over workers; the DataLoader round-robins them, so the sum is exact."""
    return total // workers + (1 if worker < total % workers else 0)


@dataclass(frozen=True)
class EvalLayout:
    shards: list[list[int]]  # per slot: indices of the shards it reads
    batches: list[int]  # per slot: batches it yields (its units, then padding rows)
    per_rank: int  # batches every rank yields


def eval_layout(counts: list[int], world: int, workers: int, batch_size: int) -> EvalLayout:
    """Deal whole shards to the S = world × workers slots and fix every slot's batch count.

    Largest shards first, each to the slot with the fewest units so far, so each shard is read once in
    all. A slot yields ceil(units / batch) batches; a rank with fewer batches than the busiest rank gives
    the difference, as padding batches, to its least-busy workers. Every rank computes the same layout.
    """
    slots = world * workers
    load = [0] * slots
    shards: list[list[int]] = [[] for _ in range(slots)]
    for i in sorted(range(len(counts)), key=lambda i: (-counts[i], i)):
        s = min(range(slots), key=lambda s: (load[s], s))
        shards[s].append(i)
        load[s] += counts[i]
    batches = [-(-u // batch_size) for u in load]
    per_rank = max(sum(batches[r * workers:(r + 1) * workers]) for r in range(world))
    for r in range(world):
        mine = range(r * workers, (r + 1) * workers)
        for _ in range(per_rank - sum(batches[s] for s in mine)):
            batches[min(mine, key=lambda s: (batches[s], s))] += 1
    return EvalLayout([sorted(s) for s in shards], batches, per_rank)


def shard_samples(source: ShardSource, name: str) -> Iterator[dict[str, Any]]:
    """Raw samples (member bytes by extension, ``__key__``, ``__url__``) of one shard; nothing decoded."""
    url = source.url(name)
    current: dict[str, Any] | None = None
    for fname, data in source.members(name):
        m = _KEY_EXT.match(fname)
        if m is None:
            continue
        key, ext = m.group(1), m.group(2).lower()
        if current is None or key != current["__key__"]:
            if current is not None:
                yield current
            current = {"__key__": key, "__url__": url}
        if ext in current:
            raise ShardError(f"{url}: member {fname} appears twice")
        current[ext] = data
    if current is not None:
        yield current


def read_samples(source: ShardSource | Iterable[str | Path],
                 names: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """Raw samples of the named shards of ``source``, in order; or, without ``names``, of local tar files
    (paths the calling code chose, never names from an index)."""
    if names is None:
        for path in source:
            yield from shard_samples(ShardSource(Path(path).parent), Path(path).name)
        return
    for name in names:
        yield from shard_samples(source, name)


def group_dialogs(samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Consecutive samples of one dialog → one unit; packing keeps a dialog's utterances together."""
    current: list[dict[str, Any]] = []
    current_id = None
    for s in samples:
        try:
            meta = json.loads(s["json"].decode("utf-8")) if "json" in s else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            meta = {}  # decoding says what is wrong, naming the sample
        meta = meta if isinstance(meta, dict) else {}
        dialog_id = (meta.get("dataset"), meta.get("split"), meta.get("dialog"))
        if current and dialog_id != current_id:
            yield {"dialog": current_id[2], "utterances": current}
            current = []
        current_id = dialog_id
        current.append(s)
    if current:
        yield {"dialog": current_id[2], "utterances": current}


def shard_units(source: ShardSource, shard: dict[str, Any], dialogs: bool) -> Iterator[dict[str, Any]]:
    """The units of one shard, checked against the count its index entry promises."""
    samples = shard_samples(source, shard["url"])
    kind = "dialogs" if dialogs else "samples"
    promised = shard[kind]
    n = 0
    for unit in group_dialogs(samples) if dialogs else samples:
        n += 1
        if n > promised:
            raise ShardError(f"{source.url(shard['url'])}: holds more than the {promised} {kind} index.json "
                             "promises; re-run `m2fdist pack --index-only`, or repack")
        yield unit
    if n < promised:
        raise ShardError(f"{source.url(shard['url'])}: holds {n} {kind}, index.json promises {promised} "
                         "(a truncated or short shard)")


def record_skip(source: ShardSource, shard: dict[str, Any], error: ShardError) -> None:
    """Training's record of a bad shard it leaves out: a warning, and a JSON line in the skip log."""
    warnings.warn(f"skipping shard for the rest of this epoch: {error}", stacklevel=2)
    if source.policy.skip_log:
        row = {"time": time.time(), "shard": source.url(shard["url"]), "reason": str(error)}
        with open(source.policy.skip_log, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def train_stream(source: ShardSource, shards: list[dict[str, Any]], slot: Slot, dialogs: bool, seed: int,
                 epoch: int, shuffle_buffer: int) -> Iterator[dict[str, Any]]:
    """Endless units for one slot: shards are dealt round-robin when there are enough of them, else
    every slot reads them all and keeps every S-th unit (counting across passes, so even a split with
    fewer units than slots feeds every slot). A bad shard raises, or under ``train_bad_shards=skip`` is
    recorded and left out of this slot's later passes."""
    rng = random.Random(f"{seed}/{epoch}/{slot.index}")
    passes = 0
    position = 0
    bad: set[str] = set()

    def units_of(order: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for shard in order:
            if shard["url"] in bad:
                continue
            try:
                yield from shard_units(source, shard, dialogs)
            except ShardError as e:
                if source.policy.train_bad_shards != "skip":
                    raise
                bad.add(shard["url"])
                record_skip(source, shard, e)

    def every_nth(units: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        nonlocal position
        for unit in units:
            if position % slot.count == slot.index:
                yield unit
            position += 1

    while True:
        order = list(shards)
        random.Random(f"{seed}/{epoch}/{passes}").shuffle(order)  # the same order on every slot
        if len(order) >= slot.count:
            units = units_of(order[slot.index :: slot.count])
        else:
            units = every_nth(units_of(order))
        before = position
        read = 0
        for unit in _shuffled(units, shuffle_buffer, rng):
            read += 1
            yield unit
        passes += 1
        if read == 0 and position == before:
            raise RuntimeError(f"worker slot {slot.index}/{slot.count} got no samples from {len(shards)} shards "
                               f"({len(bad)} left out as bad)")


def _shuffled(units: Iterable[dict], size: int, rng: random.Random) -> Iterator[dict]:
    if size <= 1:
        yield from units
        return
    buf: list[dict] = []
    for u in units:
        buf.append(u)
        if len(buf) >= size:
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


def eval_stream(source: ShardSource, shards: list[dict[str, Any]], mine: list[int], dialogs: bool,
                rows: int) -> Iterator[tuple[dict, bool]]:
    """(unit, valid) pairs: every unit of this slot's shards, then padding up to ``rows`` rows.

    Padding repeats the slot's last unit; a slot with no shard of its own reads only the split's first
    unit (a partial read of one shard), as its padding row.
    """
    last = None
    for i in mine:
        for unit in shard_units(source, shards[i], dialogs):
            last = unit
            yield unit, True
    if last is None and rows:
        last = next((u for u in _first_unit(source, shards, dialogs)), None)
        if last is None:
            raise ShardError(f"{source.location}: no samples in {len(shards)} shards")
    for _ in range(rows - sum(shards[i]["dialogs" if dialogs else "samples"] for i in mine)):
        yield last, False


def _first_unit(source: ShardSource, shards: list[dict[str, Any]], dialogs: bool) -> Iterator[dict[str, Any]]:
    for shard in shards:
        if shard["dialogs" if dialogs else "samples"]:
            units = shard_units(source, shard, dialogs)
            yield next(units)
            units.close()
            return
