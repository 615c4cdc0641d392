"""Batches from loader workers to the training process through shared memory that is reused, not remade.

A worker that builds a batch in fresh shared memory pays a page fault for every 4 KB page it writes
(tmpfs pages are zeroed on first touch), and the training process pays again when it maps and reads them:
12–16 ms for a 20 MB batch of frames here, most of what a worker process costs over decoding in-process.
So each worker keeps a few slots of shared memory (``prefetch_factor + 1``: enough for every batch it may
have in flight) and writes each batch's large tensors into a free one. The training process copies them
out into private memory (whose pages the allocator reuses, batch after batch) and marks the slot free in a
small shared flag table; torch's own sharing cache maps each slot there once. When no slot is free (a
worker may have more batches in flight once another has finished its share of the epoch) the batch goes
through fresh shared memory, as torch's default collate does: slower, never wrong.

:class:`WorkerLoader` is the one DataLoader that loads through it (utterance, dialog and chunk loaders);
:func:`batch_tensors` is how a collate function asks for its batch's large tensors.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from m2fdist.common.stop_signals import ignore_stop_signals

ALIGN = 64  # bytes: each tensor in a slot starts on a cache line
TAG = "_handoff"  # batch key the worker adds: (worker, slot, keys of the tensors living in the slot)


class Handoff:
    """Free flags of every worker's slots (shared by the training process and its workers) and, in a
    worker, its own slots. One per iterator: each epoch's workers start with every slot free."""
    def __init__(self, workers: int, slots: int):
        self.free = torch.ones(workers, slots, dtype=torch.uint8).share_memory_()
        self._slots: list[torch.UntypedStorage | None] = [None] * slots
        self._pending: tuple[int | None, torch.UntypedStorage | None] | None = None
        self._held: dict[tuple[int, int], torch.UntypedStorage] = {}
        self.fallbacks = 0  # batches a worker built in fresh shared memory (seen by the training process)
        self.reused = 0  # batches that came in a slot an earlier batch had used

    def __getstate__(self) -> dict[str, Any]:
        return {"free": self.free}  # a worker gets the flags, and makes its own slots

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.free = state["free"]
        self._slots = [None] * self.free.shape[1]
        self._pending, self._held, self.fallbacks, self.reused = None, {}, 0, 0

    # -- in a worker ---------------------------------------------------------------------------------------

    def allocate(self, specs: list[tuple[tuple[int, ...], torch.dtype]]) -> list[torch.Tensor] | None:
        """Tensors of these shapes and dtypes in one free slot of this worker, or None when none is free."""
        worker = get_worker_info().id
        free = self.free[worker]
        k = next((i for i in range(len(self._slots)) if free[i]), None)
        if k is None:
            self._pending = (None, None)
            return None
        offsets, total = [], 0
        for shape, dtype in specs:
            offsets.append(total)
            total += -(-math.prod(shape) * dtype.itemsize // ALIGN) * ALIGN
        slot = self._slots[k]
        if slot is None or slot.nbytes() < total:
            # Room to grow by a quarter, so batches a little larger than the first do not remake it.
            slot = self._slots[k] = torch.UntypedStorage._new_shared(max(ALIGN, total + total // 4))
        free[k] = 0
        self._pending = (k, slot)
        return [torch.empty(0, dtype=dtype).set_(slot, off // dtype.itemsize, shape)  # contiguous
                for (shape, dtype), off in zip(specs, offsets, strict=True)]

    def tag(self, batch: Any) -> Any:
        """Say in the batch which slot holds which of its tensors (the worker's collate_fn)."""
        if self._pending is None or not isinstance(batch, dict):
            return batch
        k, slot = self._pending
        self._pending = None
        ptr = slot.data_ptr() if slot is not None else None
        keys = [key for key, v in batch.items()
                if isinstance(v, torch.Tensor) and v.untyped_storage().data_ptr() == ptr]
        batch[TAG] = (get_worker_info().id, k, keys)  # k None: no slot was free
        return batch

    # -- in the training process ---------------------------------------------------------------------------

    def receive(self, batch: Any) -> Any:
        """Copy the slot's tensors out of shared memory and free the slot."""
        if not isinstance(batch, dict):
            return batch
        tag = batch.pop(TAG, None)
        if tag is None:
            return batch  # nothing large in it (text only)
        worker, k, keys = tag
        if k is None:
            self.fallbacks += 1
            return batch
        self.reused += (worker, k) in self._held
        for key in keys:
            # Holding the slot's storage keeps torch's sharing cache mapping it once, not once per batch.
            self._held[(worker, k)] = batch[key].untyped_storage()
            batch[key] = batch[key].clone()
        self.free[worker, k] = 1
        return batch


_current: Handoff | None = None  # this worker's, installed by worker_init_fn


def batch_tensors(specs: list[tuple[tuple[int, ...], torch.dtype]]) -> list[torch.Tensor]:
    """Uninitialised tensors for one batch: in a worker of a :class:`WorkerLoader`, in a free slot of shared
    memory; in another worker, in fresh shared memory (so sending them costs no second copy); in the
    training process, ordinary private memory."""
    if get_worker_info() is None or not specs:
        return [torch.empty(shape, dtype=dtype) for shape, dtype in specs]
    if _current is not None:
        tensors = _current.allocate(specs)
        if tensors is not None:
            return tensors
    out = []
    for shape, dtype in specs:
        elem = torch.empty(0, dtype=dtype)
        out.append(elem.new(elem._typed_storage()._new_shared(math.prod(shape), device="cpu")).resize_(*shape))
    return out


class _Install:
    """worker_init_fn: make this iterator's hand-off the worker's. Pickled when the workers start, so each
    iterator's workers get the hand-off that was current then."""
    def __init__(self) -> None:
        self.handoff: Handoff | None = None

    def __call__(self, worker_id: int) -> None:
        global _current
        _current = self.handoff
        ignore_stop_signals()


def _tag(batch: Any) -> Any:
    """collate_fn (runs in the worker): batches are collated by the dataset already; only the slot tag is
    added. Not torch's default_convert, which would walk every batch's metadata again for nothing."""
    return _current.tag(batch) if _current is not None else batch


def forkserver(workers: int, preload: list[str]) -> multiprocessing.context.BaseContext | None:
    """The context loader workers start from (None without workers): a forkserver, not a plain fork. A
    training process runs communication threads (gloo, DeepSpeed), and forking while one of them holds a lock
    can leave the child hung for ever. ``preload`` names the modules the forkserver imports once, so each
    epoch's workers start warm."""
    if not workers:
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", *preload])
    return context


class WorkerLoader(DataLoader):
    """A DataLoader over an IterableDataset of ready batches, with ``workers`` processes from a forkserver
    (:func:`forkserver`), handing batches over through reused shared-memory slots."""
    def __init__(self, dataset: IterableDataset, workers: int, preload: list[str], prefetch: int = 2,
                 generator: torch.Generator | None = None, slots: int | None = None):
        context = forkserver(workers, ["m2fdist.data.handoff", *preload])
        self._install = _Install()
        super().__init__(dataset, batch_size=None, num_workers=workers, collate_fn=_tag, persistent_workers=False,
                         prefetch_factor=prefetch if workers else None, generator=generator,
                         multiprocessing_context=context, worker_init_fn=self._install if workers else None)
        self.slots = prefetch + 1 if slots is None else slots  # per worker: one per batch it may have in flight
        self.handoff: Handoff | None = None  # the latest iterator's (its fallbacks count is worth a look)

    def __iter__(self) -> Iterator[Any]:
        if not self.num_workers:
            return super().__iter__()
        self.handoff = self._install.handoff = Handoff(self.num_workers, self.slots)
        return _Receiving(super().__iter__(), self.handoff.receive)


class _Receiving:
    """The DataLoader's iterator, with each batch copied out of its slot on the way."""
    def __init__(self, inner: Iterator[Any], receive: Callable[[Any], Any]):
        self.inner, self._receive = inner, receive

    def __iter__(self) -> _Receiving:
        return self

    def __next__(self) -> Any:
        return self._receive(next(self.inner))

    def __len__(self) -> int:
        return len(self.inner)
