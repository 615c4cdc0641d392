"""The training loop's AdamW: fused where torch has the kernel, the same update as torch's default loop."""

from __future__ import annotations

import pytest
import torch

from m2fdist.training.trainer import adamw

pytestmark = pytest.mark.unit


def _groups(dtype: torch.dtype = torch.float32) -> list[dict]:
    torch.manual_seed(0)
    return [{"params": [torch.nn.Parameter(torch.randn(4, 3, dtype=dtype))], "lr": 1e-3, "weight_decay": 0.01},
            {"params": [torch.nn.Parameter(torch.randn(3, dtype=dtype))], "lr": 2e-3, "weight_decay": 0.0}]


def test_fused_on_cpu_and_the_same_update_as_the_default_loop():
    fused, loop = _groups(), _groups()
    a, b = adamw(fused, 1e-3), torch.optim.AdamW(loop, lr=1e-3)
    assert a.defaults["fused"] is True and [g["lr"] for g in a.param_groups] == [1e-3, 2e-3]
    for _ in range(3):
        for groups in (fused, loop):
            for g in groups:
                for p in g["params"]:
                    p.grad = torch.full_like(p, 0.5) + p.detach()
        a.step()
        b.step()
    for ga, gb in zip(fused, loop, strict=True):
        torch.testing.assert_close(ga["params"][0], gb["params"][0])


def test_a_dtype_without_the_fused_kernel_gets_torchs_default():
    assert adamw(_groups(torch.complex64), 1e-3).defaults["fused"] is None
