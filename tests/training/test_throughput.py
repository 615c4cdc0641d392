"""Throughput figures: FLOPs measured on a real forward (torch's FlopCounterMode), scaled by tokens or samples,
and MFU only against a known peak."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from m2fdist.training import throughput

pytestmark = pytest.mark.unit


def test_flops_per_sample_and_per_token_are_measured_on_the_forward():
    model = nn.Sequential(nn.Dropout(0.5), nn.Linear(64, 32))
    x = torch.randn(8, 64)
    batch = {"labels": torch.zeros(8, dtype=torch.long)}
    state = torch.get_rng_state()
    per_sample = throughput.train_flops_per_unit(lambda: model(x).sum(), model, batch)
    assert per_sample == 3 * 2 * 64 * 32  # a linear layer's forward is 2·in·out per sample; training 3 forwards
    assert model.training and torch.equal(torch.get_rng_state(), state)  # mode back, no dropout drawn
    mask = torch.zeros(8, 10, dtype=torch.long)
    mask[:, :4] = 1  # 32 real tokens
    per_token = throughput.train_flops_per_unit(lambda: model(x).sum(), model, {**batch, "attention_mask": mask})
    assert per_token == pytest.approx(3 * 2 * 64 * 32 * 8 / 32)


def test_rates_per_device_and_mfu_only_with_a_peak():
    r = throughput.rates(1e9, samples=100, tokens=4000, seconds=2.0, world=2, peak=None)
    assert r["samples_per_s"] == 50 and r["tokens_per_s"] == 2000
    assert r["tflops_per_device"] == pytest.approx(1e9 * 4000 / 2 / 2 / 1e12) and "mfu" not in r
    r = throughput.rates(1e9, samples=100, tokens=0, seconds=2.0, world=1, peak=0.5)
    assert "tokens_per_s" not in r and r["mfu"] == pytest.approx(1e9 * 100 / 2 / 1e12 / 0.5)
    assert throughput.peak_tflops(torch.device("cpu"), "bf16") is None
