"""The chunked gradient norm given to ZeRO 1/2: DeepSpeed's fp64 figure, within 1e-6, without the fp64 copies."""

from __future__ import annotations

import pytest
import torch

from m2fdist.runtime.zero_norm import CHUNK, chunked_sum_of_squares, use_chunked_norm


@pytest.mark.unit
def test_the_sum_of_squares_matches_fp64_over_large_and_empty_tensors():
    torch.manual_seed(0)
    grads = [torch.randn(3 * CHUNK + 17) * 3, torch.randn(384, 384), torch.randn(7), torch.empty(0)]
    reference = sum(float(g.double().square().sum()) for g in grads)
    got = chunked_sum_of_squares(grads)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(reference, rel=1e-6)
    assert float(chunked_sum_of_squares([])) == 0.0


@pytest.mark.unit
def test_a_non_finite_gradient_gives_a_non_finite_sum():
    assert not torch.isfinite(chunked_sum_of_squares([torch.tensor([1.0, float("nan")])]))
    assert not torch.isfinite(chunked_sum_of_squares([torch.tensor([float("inf")])]))


@pytest.mark.unit
def test_other_optimizers_are_left_alone():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    assert use_chunked_norm(opt) is False and not hasattr(opt, "get_grad_norm_direct")


# Two ranks of a ZeRO-2 engine whose optimizer has the chunked norm: every norm DeepSpeed asks for is also
# computed by DeepSpeed's own method on the same gradients, and both are written out.
SCRIPT = """
import json, sys
import deepspeed, torch
from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer
from m2fdist.runtime.zero_norm import use_chunked_norm
from m2fdist.training.trainer import adamw
deepspeed.init_distributed()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 3000), torch.nn.GELU(), torch.nn.Linear(3000, 5))
config = json.load(open("configs/ds/zero2_fp32.json"))
config.update(train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=1, train_batch_size=8)
optimizer = adamw([{"params": list(model.parameters())}], 1e-3)
engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
opt = engine.optimizer
assert use_chunked_norm(opt)
chunked = opt.get_grad_norm_direct
seen = []
def both(gradients, params, norm_type=2):
    gradients, params = list(gradients), list(params)
    ours = chunked(gradients, params, norm_type)
    seen.append((float(ours), float(DeepSpeedZeroOptimizer.get_grad_norm_direct(opt, gradients, params, norm_type))))
    return ours
opt.get_grad_norm_direct = both
for step in range(3):
    x = torch.randn(4, 64) * (1 + step + engine.global_rank)
    loss = engine(x).square().mean() * 100
    engine.backward(loss)
    engine.step()
if engine.global_rank == 0:
    json.dump({"seen": seen, "norm": float(engine.get_global_grad_norm())}, open(sys.argv[-1], "w"))
"""


@pytest.mark.launch
def test_a_zero2_engine_clips_with_the_chunked_norm_deepspeeds_own_figure(tmp_path):
    from launching import two_ranks

    got = two_ranks(SCRIPT, tmp_path, "norm")
    assert len(got["seen"]) == 3, got  # one norm per optimizer step, each through the chunked method
    for ours, deepspeeds in got["seen"]:
        assert deepspeeds > 1.0  # clipping (at 1.0) acted on a real norm, not a masked -1
        assert ours == pytest.approx(deepspeeds, rel=1e-6)
    assert got["norm"] == pytest.approx(got["seen"][-1][1], rel=1e-6)
