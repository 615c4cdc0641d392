"""Loading shards: equal batches on every rank and worker, exact evaluation coverage, never unpickling."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch

from m2fdist.data import IGNORE_INDEX, LoaderConfig, ShardDecodeError, make_loader
from m2fdist.data.handoff import WorkerLoader
from m2fdist.data.loader import ShardDataset
from m2fdist.data.stream import read_samples
from m2fdist.format.source import ShardSource

pytestmark = pytest.mark.unit


def run_ranks(shards: Path, split: str, world: int, **config) -> list[list[dict]]:
    """Every rank's batches, as the rank would see them (real DataLoader workers)."""
    out = []
    for rank in range(world):
        loader = make_loader(shards, split, LoaderConfig(**config), rank=rank, world_size=world)
        batches = list(loader)
        assert len(batches) == len(loader)
        out.append(batches)
    return out


def test_shards_are_uneven(meld_shards):
    _, index = meld_shards
    counts = {s["samples"] for s in index["splits"]["train"]["shards"]}
    assert len(counts) > 1 and len(index["splits"]["train"]["shards"]) >= 3


@pytest.mark.parametrize(("world", "workers", "level"), [(2, 2, "utterance"), (3, 1, "utterance"), (2, 2, "dialog")])
def test_every_rank_gets_the_same_number_of_batches(meld_shards, world, workers, level):
    shards, index = meld_shards
    entry = index["splits"]["train"]
    units = entry["dialogs"] if level == "dialog" else entry["samples"]
    per_rank = run_ranks(shards, "train", world, level=level, batch_size=2, num_workers=workers)
    assert {len(b) for b in per_rank} == {units // (world * 2)}
    for batches in per_rank:
        for b in batches:
            assert b["labels"].shape[0] == 2 and b["valid"].all()
    if level == "dialog":
        for b in (b for batches in per_rank for b in batches):
            for keys, mask, labels in zip(b["keys"], b["mask"], b["labels"], strict=True):
                assert int(mask.sum()) == len(keys)
                assert keys == sorted(keys)  # the dialog's utterances, in order
                assert (labels[~mask] == IGNORE_INDEX).all() and (labels[mask] >= 0).all()


@pytest.mark.parametrize(("world", "workers", "level"), [(2, 2, "utterance"), (3, 2, "dialog")])
def test_evaluation_reads_every_unit_once(meld_shards, world, workers, level):
    shards, index = meld_shards
    per_rank = run_ranks(shards, "test", world, level=level, batch_size=3, num_workers=workers, train=False)
    assert len({len(b) for b in per_rank}) == 1
    seen = Counter()
    for batches in per_rank:
        for b in batches:
            for keys, valid in zip(b["keys"], b["valid"], strict=True):
                if valid:
                    seen[tuple(keys) if level == "dialog" else keys] += 1
    entry = index["splits"]["test"]
    assert sum(seen.values()) == (entry["dialogs"] if level == "dialog" else entry["samples"])
    assert set(seen.values()) == {1}


def test_training_epochs_reshuffle(meld_shards):
    shards, _ = meld_shards
    loader = make_loader(shards, "train", LoaderConfig(batch_size=4, num_workers=0), rank=0, world_size=1)
    first = [k for b in loader for k in b["keys"]]
    loader.dataset.set_epoch(1)
    second = [k for b in loader for k in b["keys"]]
    assert first != second and len(first) == len(second)


def test_utterance_batch_contents(meld_shards):
    shards, _ = meld_shards
    b = next(iter(make_loader(shards, "train", LoaderConfig(batch_size=4, num_workers=0, train=False),
                              rank=0, world_size=1)))
    assert b["frames"].dtype == torch.uint8 and b["frames"].shape[:2] == (4, 15) and b["frames"].shape[-1] == 3
    assert b["audio"].dtype == torch.float32
    for i, n in enumerate(b["audio_len"].tolist()):
        assert b["audio_mask"][i].sum() == n and (b["audio"][i, n:] == 0).all()
    assert all(isinstance(t, str) for t in b["text"])
    assert b["context_next"][0][0] == b["text"][1] or b["meta"][0]["dialog"] != b["meta"][1]["dialog"]


@pytest.mark.parametrize(("level", "slots"), [("utterance", None), ("utterance", 1), ("dialog", None)])
def test_worker_batches_reuse_shared_slots_and_stay_intact(meld_shards, level, slots):
    """Workers write batches into reused shared-memory slots: every batch kept by the caller must still equal
    the one built in fresh shared memory (slots=0, torch's own way) after later batches came through the same
    slots; with too few slots for the batches in flight the workers fall back to fresh memory, still exact."""
    shards, _ = meld_shards
    config = LoaderConfig(level=level, batch_size=2, num_workers=2, train=False)

    def load(n_slots: int | None) -> tuple[WorkerLoader, list[dict]]:
        loader = WorkerLoader(ShardDataset(shards, "train", config, 0, 1), 2, ["m2fdist.data.loader"], slots=n_slots)
        return loader, list(loader)

    fresh, expected = load(0)
    assert fresh.handoff.fallbacks == len(expected) and fresh.handoff.reused == 0
    loader, got = load(slots)
    assert len(got) == len(expected) > 0
    for a, b in zip(expected, got, strict=True):
        assert a["keys"] == b["keys"] and "_handoff" not in b
        assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["audio"], b["audio"])
        assert torch.equal(a["labels"], b["labels"])
    # Batches that came in a slot were copied out of it (the slot is the worker's again); fallbacks were not.
    assert sum(not b["frames"].is_shared() for b in got) == len(got) - loader.handoff.fallbacks
    if slots is None:
        assert loader.handoff.fallbacks == 0 and loader.handoff.reused >= len(got) - 2 * loader.slots
        assert level == "dialog" or len(got) > 2 * loader.slots  # more batches than slots: they were reused
    else:
        assert loader.handoff.fallbacks > 0 and loader.handoff.reused > 0


def test_too_big_batch_is_a_clear_error(meld_shards):
    shards, index = meld_shards
    with pytest.raises(ValueError, match="lower the batch size"):
        make_loader(shards, "dev", LoaderConfig(batch_size=10_000), rank=0, world_size=2)
    with pytest.raises(KeyError, match="not in"):
        make_loader(shards, "nosuch", LoaderConfig())
    with pytest.raises(FileNotFoundError, match="pack the corpus"):
        make_loader(shards / "nowhere", "train", LoaderConfig())


class Boom:
    """Unpickling this writes a file: the test checks that file never appears."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "unpickled!"))


def _poisoned_copy(shards: Path, tmp_path: Path, member: str, marker: Path) -> Path:
    """A one-shard copy of the test split where the first sample carries a pickle as ``member``."""
    index = json.loads((shards / "index.json").read_text())
    first = index["splits"]["test"]["shards"][0]
    samples = list(read_samples(ShardSource(shards), [first["url"]]))
    out = tmp_path / member
    out.mkdir()
    with tarfile.open(out / first["url"], "w") as tar:
        for i, s in enumerate(samples):
            members = {k: v for k, v in s.items() if not k.startswith("__")}
            if i == 0:
                members[member] = pickle.dumps(Boom(str(marker)))
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    index["splits"] = {"test": dict(index["splits"]["test"], shards=[first], samples=first["samples"],
                                    dialogs=first["dialogs"])}
    (out / "index.json").write_text(json.dumps(index))
    return out


def test_pickle_members_are_never_unpickled(meld_shards, tmp_path):
    shards, _ = meld_shards
    marker = tmp_path / "pwned"
    poisoned = _poisoned_copy(shards, tmp_path, "pyd", marker)
    config = LoaderConfig(batch_size=1, num_workers=0, train=False)
    with pytest.warns(UserWarning, match=r"ignoring shard member \.pyd"):
        batches = list(make_loader(poisoned, "test", config, rank=0, world_size=1))
    assert len(batches) == json.loads((poisoned / "index.json").read_text())["splits"]["test"]["samples"]
    assert not marker.exists()
    # a pickle in place of the json member is refused with a clear error, not executed
    shutil.rmtree(poisoned)
    poisoned = _poisoned_copy(shards, tmp_path, "json", marker)
    with pytest.raises(ShardDecodeError, match="not UTF-8 JSON"):
        list(make_loader(poisoned, "test", config, rank=0, world_size=1))
    assert not marker.exists()
