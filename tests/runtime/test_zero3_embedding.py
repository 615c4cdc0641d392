"""A frozen embedding looked up from ZeRO-3 partitions: the ranks' partial rows sum to the whole table's lookup,
to the bit, however the flat partitions cut the rows (the launch test tests/training/test_zero3_load.py trains
through it and checks the same losses and export as a run that gathers the table)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from m2fdist.runtime.zero3_embedding import local_rows, shard_frozen_embeddings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("vocab", "dim", "world"), [(10, 4, 2), (7, 5, 2), (7, 5, 3), (3, 16, 8), (1, 3, 2)])
def test_the_partial_rows_of_every_rank_sum_to_the_lookup(vocab, dim, world):
    torch.manual_seed(0)
    table = torch.randn(vocab, dim, dtype=torch.bfloat16)
    part = -(-table.numel() // world)  # DeepSpeed's partition size: the flat table padded to world × part
    flat = torch.cat([table.view(-1), torch.zeros(world * part - table.numel(), dtype=table.dtype)])
    ids = torch.randint(0, vocab, (3, 11))
    ids[0, :vocab] = torch.arange(vocab)[:11]  # every row at least once (rows cut by a partition too)
    parts = [local_rows(flat[r * part:(r + 1) * part][:max(0, table.numel() - r * part)], r * part, ids, dim)
             for r in range(world)]
    assert all(p.shape == (ids.numel(), dim) for p in parts)
    got = torch.stack(parts).sum(0)  # what the all-reduce computes
    assert torch.equal(got.view(*ids.shape, dim), nn.functional.embedding(ids, table))
    held = [(p != 0).any(1) for p in parts]  # a rank contributes to the ids whose row it holds a part of
    assert torch.stack(held).any(0).all()


def test_only_a_partitioned_frozen_untied_embedding_is_replaced():
    model = nn.Module()
    model.frozen, model.trained = nn.Embedding(4, 2), nn.Embedding(4, 2)
    model.frozen.requires_grad_(False)
    assert shard_frozen_embeddings(model) == []  # not ZeRO-3 partitioned (no ds_tensor): left as it is
    assert type(model.frozen) is nn.Embedding and type(model.trained) is nn.Embedding
