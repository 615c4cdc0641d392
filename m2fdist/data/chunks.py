"""Dialogs in bounded chunks, for extraction: memory per rank set by a chunk size, not by dialog length.

Loading whole dialogs holds every utterance's decoded frames and audio at once (an IEMOCAP dialog has 100+
turns: about 1.4 GB of frames per batch of 4, times workers × prefetch). Extraction needs no such thing: the
extractors see one utterance at a time, and only the dialog's small feature matrix must be put together.
So each worker streams its dialogs' utterances in order and yields chunks of at most ``chunk`` decoded
utterances (a chunk may end one dialog and start the next); every utterance carries its dialog and whether
it is the dialog's last, so the consumer writes a dialog as soon as it is complete.

Who reads what: dialogs never span shards (packing keeps them together), so with at least as many shards as
slots (world × workers) shard j goes to slot j mod S and each shard is read once; with fewer, every slot
reads them all and keeps dialog i when i ≡ slot (mod S). Each dialog is extracted exactly once.

Shards are read as the training loader reads them: through :class:`~m2fdist.format.source.ShardSource` (a local
folder or an allowed URL, the read policy's bounds), each shard checked against the count its index entry
promises, and an optional ``transform`` (the text model's tokeniser) run on each chunk in the worker.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from m2fdist.data.collate import collate_utterances
from m2fdist.data.decode import decode_sample
from m2fdist.data.handoff import WorkerLoader
from m2fdist.data.stream import shard_units
from m2fdist.format.index import load_index
from m2fdist.format.source import ReadPolicy, ShardSource

Transform = Callable[[dict[str, Any]], dict[str, Any]]


def _dialog_id(raw: dict[str, Any]) -> tuple:
    meta = json.loads(raw["json"].decode("utf-8")) if "json" in raw else {}
    return meta.get("dataset"), meta.get("split"), meta.get("dialog")


class DialogChunks(IterableDataset):
    """One split's utterances for one rank, as collated chunks of at most ``chunk`` utterances, with
    ``dialog`` (id per utterance) and ``last`` (True on a dialog's last utterance) added to each batch."""
    def __init__(self, shards: str | Path | ShardSource, split: str, chunk: int, rank: int, world: int, workers: int,
                 num_frames: int, frame_size: tuple[int, int] | None, members: tuple[str, ...],
                 read: ReadPolicy | None = None, transform: Transform | None = None):
        super().__init__()
        if chunk < 1:
            raise ValueError("chunk must be >= 1")
        self.source = shards if isinstance(shards, ShardSource) else ShardSource(shards, read)
        index = load_index(self.source)
        if split not in index["splits"]:
            raise KeyError(f"split {split!r} not in {self.source.url('index.json')} (has {sorted(index['splits'])})")
        self.shards = index["splits"][split]["shards"]
        self.chunk, self.rank, self.world, self.workers = chunk, rank, world, max(1, workers)
        self.decode = (num_frames, frame_size, members, len(index.get("label_names", [])), self.source.policy)
        self.transform = transform

    def _samples(self) -> Iterator[tuple[dict[str, Any], bool]]:
        """(raw sample, last of its dialog) for this slot's dialogs, in order, looking one sample ahead:
        not even a dialog's compressed bytes are held whole."""
        info = get_worker_info()
        slot = self.rank * self.workers + (info.id if info else 0)
        count = self.world * self.workers
        shards, keep_every = (self.shards[slot::count], False) if len(self.shards) >= count else (self.shards, True)
        pending: tuple[dict[str, Any], tuple] | None = None
        current_id, n = None, -1
        for raw in (unit for shard in shards for unit in shard_units(self.source, shard, False)):
            did = _dialog_id(raw)
            if did != current_id:
                current_id, n = did, n + 1
            if pending is not None and pending[1] != did:
                yield pending[0], True
                pending = None
            if keep_every and n % count != slot:
                continue
            if pending is not None:
                yield pending[0], False
            pending = (raw, did)
        if pending is not None:
            yield pending[0], True

    def __iter__(self) -> Iterator[dict[str, Any]]:
        decoded: list[dict[str, Any]] = []
        last: list[bool] = []
        for raw, is_last in self._samples():
            decoded.append(decode_sample(raw, *self.decode))
            last.append(is_last)
            if len(decoded) == self.chunk:
                yield self._collate(decoded, last)
                decoded, last = [], []
        if decoded:
            yield self._collate(decoded, last)

    def _collate(self, decoded: list[dict[str, Any]], last: list[bool]) -> dict[str, Any]:
        batch = collate_utterances(decoded)
        batch["dialog"] = [s["meta"]["dialog"] for s in decoded]
        batch["last"] = last
        return self.transform(batch) if self.transform else batch


def chunk_loader(shards: str | Path | ShardSource, split: str, chunk: int, rank: int, world: int, workers: int,
                 num_frames: int, frame_size: tuple[int, int] | None, members: tuple[str, ...],
                 read: ReadPolicy | None = None, transform: Transform | None = None) -> DataLoader:
    """A DataLoader over :class:`DialogChunks`; per worker, the chunk it decodes and its three hand-off slots
    (m2fdist.data.handoff) hold decoded chunks, and the training process the one it uses."""
    data = DialogChunks(shards, split, chunk, rank, world, workers, num_frames, frame_size, members, read, transform)
    return WorkerLoader(data, workers, ["m2fdist.data.chunks", *getattr(transform, "preload", ())])
