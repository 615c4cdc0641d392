"""Under ZeRO-3, a frozen input embedding looked up from the ranks' partitions instead of gathered whole.

ZeRO-3 gathers a module's whole weight to run it, and the input embedding is the largest weight of an LLM:
Qwen3-8B's is 151 936 × 4 096 (1.24 GB in bf16), gathered on every rank at every forward to read the rows of
64 tokens. The 8B LoRA run's peak was a step's transients above its resting partitions, and the gathered
embedding was most of them.

A lookup needs only its tokens' rows, and each rank already holds a contiguous slice of the weight (DeepSpeed
partitions the flattened tensor: rank r holds elements ``[r·P, (r+1)·P)``). :class:`ShardedEmbedding` gathers
every rank's token ids, writes the parts of their rows its slice holds into a zero buffer, and a reduce-scatter
sums the ranks' buffers, each rank receiving its own tokens' rows. Every element comes from exactly one rank and
the rest add zeros, so the result is the gathered lookup's to the bit, for world × tokens × hidden elements of
traffic instead of the table.

Only a frozen embedding is replaced (LoRA, other peft adapters, a frozen encoder): it has no gradient to
reduce, and those runs leave frozen weights out of their checkpoints and read them back from ``text.model``
(``frozen_source``), so the slice it holds (a buffer, not a parameter, not saved) is never written anywhere.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


def local_rows(shard: Tensor, start: int, ids: Tensor, dim: int) -> Tensor:
    """``(len(ids), dim)``: each id's row of the whole table where it lies in ``shard`` (the flat elements
    ``[start, start + len(shard))`` of the table), zero elsewhere."""
    flat = ids.reshape(-1)
    out = torch.zeros(flat.numel(), dim, dtype=shard.dtype, device=shard.device)
    stop = start + shard.numel()
    first, last = -(-start // dim), stop // dim  # the rows held whole: [first, last)
    if last > first:  # (masks with no hit index nothing: no host read of whether they hit)
        whole = (flat >= first) & (flat < last)
        table = shard[first * dim - start:last * dim - start].view(-1, dim)
        out[whole] = table[flat[whole] - first]
    # at most two rows are held in part: the one the slice starts inside and the one it ends inside
    for row in sorted({start // dim, (stop - 1) // dim}):
        lo, hi = max(start, row * dim), min(stop, (row + 1) * dim)
        if hi - lo == dim or hi <= lo:
            continue  # held whole (done above), or not at all
        out[flat == row, lo - row * dim:hi - row * dim] = shard[lo - start:hi - start]
    return out


class ShardedEmbedding(nn.Module):
    """An embedding lookup from this rank's slice of a ZeRO-3 partitioned, frozen table (see the module doc).

    Every rank of ``group`` must call it together, as they do every ZeRO-3 module's forward."""

    def __init__(self, shard: Tensor, num_embeddings: int, embedding_dim: int, start: int, group: Any) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.start, self.group = num_embeddings, embedding_dim, start, group
        held = max(0, min(shard.numel(), num_embeddings * embedding_dim - start))  # the last slice is padded
        self.register_buffer("shard", shard.detach().view(-1)[:held], persistent=False)

    def forward(self, input_ids: Tensor) -> Tensor:
        """Ranks look up different tokens (their own batches, of their own lengths): every rank writes what it
        holds of every rank's rows, and a reduce-scatter hands each rank the sums for its own."""
        flat = input_ids.reshape(-1).to(self.shard.device)
        world = dist.get_world_size(self.group)
        most = torch.tensor([flat.numel()], device=flat.device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX, group=self.group)
        n = int(most)  # one host read per forward: the buffers' size (ZeRO-3's own gathers sync more)
        padded = torch.zeros(n, dtype=torch.long, device=flat.device)
        padded[:flat.numel()] = flat
        every = torch.empty(world * n, dtype=torch.long, device=flat.device)
        dist.all_gather_into_tensor(every, padded, group=self.group)
        rows = local_rows(self.shard, self.start, every, self.embedding_dim)
        mine = torch.empty(n, self.embedding_dim, dtype=rows.dtype, device=rows.device)
        dist.reduce_scatter_tensor(mine, rows, group=self.group)
        return mine[:flat.numel()].view(*input_ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, elements {self.start}.."
                f"{self.start + self.shard.numel()} here")


def shard_frozen_embeddings(model: nn.Module) -> list[str]:
    """Replace each frozen, ZeRO-3 partitioned, untied ``nn.Embedding`` of ``model`` by a
    :class:`ShardedEmbedding` over its partitions; returns the names of those replaced. Call it after the model is
    built partitioned and adapted, before ``deepspeed.initialize`` (which then never sees the weight)."""
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    replaced = []
    for name, module in list(model.named_modules()):
        w = getattr(module, "weight", None)
        if (type(module) is not nn.Embedding or w is None or w.requires_grad or not hasattr(w, "ds_tensor")
                or uses.get(id(w), 0) != 1 or module.max_norm is not None):
            continue
        group = getattr(w, "ds_process_group", None)
        if dist.get_world_size(group) == 1:
            continue
        start = dist.get_rank(group) * w.ds_tensor.ds_numel  # DeepSpeed's partition layout
        new = ShardedEmbedding(w.ds_tensor.data, module.num_embeddings, module.embedding_dim, start, group)
        for hooks in ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                      "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs"):  # transformers' require-grad hook
            getattr(new, hooks).update(getattr(module, hooks))
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        replaced.append(name)
    return replaced
