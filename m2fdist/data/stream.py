"""Who reads what: spreading shards over ranks and dataloader workers with equal batch counts.

Collective training hangs if one rank runs out of batches before the others, and shards are uneven
(dialogs are never split, and packing skips bad clips). So the number of batches is fixed up front from
``index.json``, not from what a rank happens to read:

- training: every rank yields ``units // (world × batch)`` batches per epoch; each worker streams its
  shards over and over (reshuffled each pass) until it has produced its share, so a worker with
  smaller shards repeats some units instead of stopping early;
- evaluation: every unit is read exactly once across all ranks (unit i goes to slot i mod S) and each
  slot pads its stream, with rows marked invalid, to the same length.

A "unit" is an utterance or, for dialog-level loading, a whole dialog. A slot is one worker of one
rank: S = world × workers.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import webdataset as wds


@dataclass(frozen=True)
class Slot:
    index: int
    count: int


def train_batches_per_rank(units: int, world: int, batch_size: int) -> int:
    return units // (world * batch_size)


def worker_share(total: int, workers: int, worker: int) -> int:
    """Split ``total`` batches over workers; the DataLoader round-robins them, so the sum is exact."""
    return total // workers + (1 if worker < total % workers else 0)


def eval_units_per_slot(units: int, slots: int) -> int:
    return max(1, math.ceil(units / slots))


def read_samples(urls: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Raw samples (member bytes by extension) from tar shards, in order; nothing decoded."""
    yield from wds.tarfile_to_samples(handler=wds.reraise_exception)({"url": u} for u in urls)


def group_dialogs(samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Consecutive samples of one dialog → one unit; packing keeps a dialog's utterances together."""
    current: list[dict[str, Any]] = []
    current_id = None
    for s in samples:
        meta = json.loads(s["json"].decode("utf-8")) if "json" in s else {}
        dialog_id = (meta.get("dataset"), meta.get("split"), meta.get("dialog"))
        if current and dialog_id != current_id:
            yield {"dialog": current_id[2], "utterances": current}
            current = []
        current_id = dialog_id
        current.append(s)
    if current:
        yield {"dialog": current_id[2], "utterances": current}


def units_of(urls: list[str], dialogs: bool) -> Iterator[dict[str, Any]]:
    samples = read_samples(urls)
    return group_dialogs(samples) if dialogs else samples


def train_stream(urls: list[str], slot: Slot, dialogs: bool, seed: int, epoch: int,
                 shuffle_buffer: int) -> Iterator[dict[str, Any]]:
    """Endless units for one slot: shards are dealt round-robin when there are enough of them, else
    every slot reads them all and keeps every S-th unit (counting across passes, so even a split with
    fewer units than slots feeds every slot)."""
    rng = random.Random(f"{seed}/{epoch}/{slot.index}")
    passes = 0
    position = 0

    def every_nth(units: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        nonlocal position
        for unit in units:
            if position % slot.count == slot.index:
                yield unit
            position += 1

    while True:
        order = list(urls)
        random.Random(f"{seed}/{epoch}/{passes}").shuffle(order)  # the same order on every slot
        if len(order) >= slot.count:
            units = units_of(order[slot.index :: slot.count], dialogs)
        else:
            units = every_nth(units_of(order, dialogs))
        before = position
        read = 0
        for unit in _shuffled(units, shuffle_buffer, rng):
            read += 1
            yield unit
        passes += 1
        if read == 0 and position == before:
            raise RuntimeError(f"worker slot {slot.index}/{slot.count} got no samples from {len(urls)} shards")


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


def eval_stream(urls: list[str], slot: Slot, dialogs: bool, total_units: int) -> Iterator[tuple[dict, bool]]:
    """(unit, valid) pairs: this slot's units i ≡ slot (mod S), then padding up to the common length."""
    target = eval_units_per_slot(total_units, slot.count)
    produced = 0
    fallback = None
    for i, unit in enumerate(units_of(urls, dialogs)):
        if i == 0:
            fallback = unit
        if i % slot.count == slot.index:
            produced += 1
            fallback = unit
            yield unit, True
    if produced > target:
        raise RuntimeError(f"shards hold more units than index.json says ({total_units}); re-run pack --index-only")
    if fallback is None:
        raise RuntimeError(f"no samples in {len(urls)} shards")
    for _ in range(target - produced):
        yield fallback, False
