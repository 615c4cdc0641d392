"""WebDataset loaders over packed shards: utterance samples and dialog samples, decoded on the fly.

Batches are built inside the workers (so decoding and padding run in parallel) and the DataLoader only
forwards them. ``len(loader)`` is the number of batches this rank yields, the same on every rank.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from m2fdist.data.collate import collate_dialogs, collate_utterances
from m2fdist.data.decode import NUM_FRAMES, decode_sample
from m2fdist.data.features import collate_features, decode_features
from m2fdist.data.handoff import WorkerLoader
from m2fdist.data.stream import Slot, eval_layout, eval_stream, train_batches_per_rank, train_stream, worker_share
from m2fdist.format.index import load_index
from m2fdist.format.source import ReadPolicy, ShardSource


@dataclass
class LoaderConfig:
    level: str = "utterance"  # "dialog" groups a dialog's utterances; "features" reads dialog feature shards
    batch_size: int = 8
    num_workers: int = 2
    train: bool = True
    num_frames: int = NUM_FRAMES
    frame_size: tuple[int, int] | None = None  # (width, height); None keeps the packed size
    shuffle_buffer: int = 64
    seed: int = 0
    # Members to decode: a stage that needs only text skips video and audio decoding altogether.
    members: tuple[str, ...] = ("json", "mp4", "wav")
    # Applied to every collated batch inside the worker (the text stage's tokeniser), so it overlaps training.
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    read: ReadPolicy = field(default_factory=ReadPolicy)  # bounds on untrusted shards; bad-shard policy


def dist_rank_world() -> tuple[int, int]:
    """Rank and world size from torch.distributed when it is up, else from the launcher's env vars."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardDataset(IterableDataset):
    """One split of a shards folder, as batches for one rank."""
    def __init__(self, shards: str | Path | ShardSource, split: str, config: LoaderConfig, rank: int | None = None,
                 world_size: int | None = None):
        super().__init__()
        if config.level not in ("utterance", "dialog", "features"):
            raise ValueError(f"level must be 'utterance', 'dialog' or 'features', not {config.level!r}")
        if config.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.source = shards if isinstance(shards, ShardSource) else ShardSource(shards, config.read)
        index = load_index(self.source)
        if split not in index["splits"]:
            raise KeyError(f"split {split!r} not in {self.source.url('index.json')} (has {sorted(index['splits'])})")
        entry = index["splits"][split]
        self.shards = entry["shards"]
        self.num_labels = len(index.get("label_names", []))
        self.units = entry["dialogs"] if config.level == "dialog" else entry["samples"]
        self.config = config
        default_rank, default_world = dist_rank_world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        self.workers = max(1, config.num_workers)
        kind = "dialogs" if config.level == "dialog" else "samples"
        self.layout = eval_layout([s[kind] for s in self.shards], self.world_size, self.workers, config.batch_size)
        self.epoch = 0
        self.skip_batches = 0
        if config.train and train_batches_per_rank(self.units, self.world_size, config.batch_size) == 0:
            raise ValueError(
                f"{split} has {self.units} {'utterances' if config.level == 'utterance' else 'dialogs'}, fewer than "
                f"world size {self.world_size} × "
                f"batch size {config.batch_size}: lower the batch size"
            )

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Reshuffle for a new epoch; call before iterating the loader (workers are re-created).

        ``skip_batches`` resumes mid-epoch: the first batches this rank already trained on are skipped
        before decoding, so the rest of the epoch is exactly what an uninterrupted run would have seen.
        """
        if not 0 <= skip_batches <= len(self):
            raise ValueError(f"cannot skip {skip_batches} of {len(self)} batches")
        self.epoch, self.skip_batches = epoch, skip_batches

    def __len__(self) -> int:
        c = self.config
        if c.train:
            return train_batches_per_rank(self.units, self.world_size, c.batch_size)
        return self.layout.per_rank

    def _slot(self) -> tuple[Slot, int]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        return Slot(self.rank * self.workers + worker, self.world_size * self.workers), worker

    def __iter__(self) -> Iterator[dict[str, Any]]:
        c = self.config
        slot, worker = self._slot()
        dialogs = c.level == "dialog"
        if c.train:
            n_batches = worker_share(len(self), self.workers, worker)
            stream = ((u, True) for u in train_stream(self.source, self.shards, slot, dialogs, c.seed, self.epoch,
                                                      c.shuffle_buffer))
            # The DataLoader takes batches from workers round-robin: batch i came from worker i mod W.
            skipped = worker_share(self.skip_batches, self.workers, worker)
            for _ in range(skipped * c.batch_size):
                next(stream)
            n_batches -= skipped
        else:
            n_batches = self.layout.batches[slot.index]
            stream = eval_stream(self.source, self.shards, self.layout.shards[slot.index], dialogs,
                                 n_batches * c.batch_size)
        batch: list[dict[str, Any]] = []
        made = 0
        padding = None  # a padding row is decoded once
        for unit, valid in stream:
            if made == n_batches:
                break
            if valid:
                batch.append(self._decode(unit, True))
            else:
                padding = padding or self._decode(unit, False)
                batch.append(padding)
            if len(batch) == c.batch_size:
                yield self._collate(batch)
                batch, made = [], made + 1
        if batch and made < n_batches:
            yield self._collate(batch)

    def _decode(self, unit: dict[str, Any], valid: bool) -> dict[str, Any]:
        c = self.config
        if c.level == "features":
            return {**decode_features(unit, self.num_labels), "valid": valid}
        if c.level == "dialog":
            utts = [self._sample(s) for s in unit["utterances"]]
            return {"dialog": unit["dialog"], "utterances": utts, "valid": valid}
        return {**self._sample(unit), "valid": valid}

    def _sample(self, raw: dict[str, Any]) -> dict[str, Any]:
        c = self.config
        return decode_sample(raw, c.num_frames, c.frame_size, c.members, self.num_labels, c.read)

    def _collate(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        level = self.config.level
        if level == "features":
            out = collate_features(batch)
        else:
            out = collate_dialogs(batch) if level == "dialog" else collate_utterances(batch)
        return self.config.transform(out) if self.config.transform else out


def make_loader(shards: str | Path | ShardSource, split: str, config: LoaderConfig | None = None,
                rank: int | None = None, world_size: int | None = None) -> DataLoader:
    """A DataLoader yielding collated batches; ``loader.dataset.set_epoch(e)`` before each epoch.

    ``shards`` is a local folder or a URL (http(s)://, s3://, gs://: see :mod:`m2fdist.format.source`).
    """
    config = config or LoaderConfig()
    dataset = ShardDataset(shards, split, config, rank, world_size)
    # Its own generator: starting an epoch's iterator must not draw from the global RNG, or a resumed run
    # (global RNG restored from a checkpoint) would see different dropout masks than an uninterrupted one.
    return WorkerLoader(dataset, config.num_workers, ["m2fdist.data.loader", *getattr(config.transform, "preload", ())],
                        generator=torch.Generator().manual_seed(config.seed))
