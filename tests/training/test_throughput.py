"""Throughput figures: a step's FLOPs from the forward counted by torch's FlopCounterMode and a formula that
knows what is trained, checked against the counter on real forward + backward passes; MFU against a peak
that says where it came from."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertForSequenceClassification

from m2fdist.training import throughput

pytestmark = pytest.mark.unit


def tiny_bert() -> nn.Module:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=120, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64, num_labels=7,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager")
    return BertForSequenceClassification(cfg)


def counted_step(model: nn.Module, ids: torch.Tensor) -> float:
    """What the counter sees in a real training step: forward and backward, gradients only where trained."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids).logits.sum().backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def frozen_but_head(model: nn.Module) -> nn.Module:
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("classifier")
    return model


def lora(model: nn.Module) -> nn.Module:
    return get_peft_model(model, LoraConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"]))


@pytest.mark.parametrize("setup", [lambda m: m, lora, frozen_but_head], ids=["full", "lora", "frozen-encoder"])
def test_a_steps_flops_match_the_counter_on_forward_and_backward(setup):
    model = setup(tiny_bert())
    ids = torch.randint(0, 120, (4, 32))
    formula = throughput.train_step_flops(lambda: model(input_ids=ids).logits.sum(), model)
    assert formula == pytest.approx(counted_step(model, ids), rel=0.02)


def test_frozen_and_lora_weights_cost_no_weight_gradients():
    ids = torch.randint(0, 120, (4, 32))
    full, low_rank, head = (throughput.train_step_flops(lambda m=m: m(input_ids=ids).logits.sum(), m)
                            for m in (tiny_bert(), lora(tiny_bert()), frozen_but_head(tiny_bert())))
    assert head < 0.5 * low_rank < 0.4 * full  # 3x, about 2x and about 1x the forward


def test_flops_per_sample_and_per_token_and_no_state_change():
    model = nn.Sequential(nn.Dropout(0.5), nn.Linear(64, 32))
    x = torch.randn(8, 64)
    batch = {"labels": torch.zeros(8, dtype=torch.long)}
    state = torch.get_rng_state()
    per_sample = throughput.train_flops_per_unit(lambda: model(x).sum(), model, batch)
    assert per_sample == 2 * 2 * 64 * 32  # forward 2·in·out per sample, the weight gradient the same (x needs none)
    assert model.training and torch.equal(torch.get_rng_state(), state)  # mode back, no dropout drawn
    mask = torch.zeros(8, 10, dtype=torch.long)
    mask[:, :4] = 1  # 32 real tokens
    per_token = throughput.train_flops_per_unit(lambda: model(x).sum(), model, {**batch, "attention_mask": mask})
    assert per_token == pytest.approx(2 * 2 * 64 * 32 * 8 / 32)


def test_rates_per_device_and_mfu_only_with_a_peak():
    r = throughput.rates(1e9, samples=100, tokens=4000, seconds=2.0, world=2, peak=None)
    assert r["samples_per_s"] == 50 and r["tokens_per_s"] == 2000
    assert r["tflops_per_device"] == pytest.approx(1e9 * 4000 / 2 / 2 / 1e12) and "mfu" not in r
    r = throughput.rates(1e9, samples=100, tokens=0, seconds=2.0, world=1, peak=throughput.Peak(0.5, "given"))
    assert "tokens_per_s" not in r and r["mfu"] == pytest.approx(1e9 * 100 / 2 / 1e12 / 0.5)
    assert "MFU" in throughput.summary(r) and "tok/s" not in throughput.summary(r)


def test_the_peak_is_the_configs_then_the_datasheets_then_a_cpu_probe_said_as_such():
    cpu = torch.device("cpu")
    assert throughput.peak_tflops(cpu, "bf16") is None  # no datasheet figure for a CPU
    given = throughput.run_peak(cpu, "bf16", 123.0)
    assert given == throughput.Peak(123.0, "train.peak_tflops")
    probed = throughput.run_peak(cpu, "fp32", 0.0)
    assert probed is not None and "probe" in probed.source and 1e-4 < probed.tflops < 100
    assert throughput.peak_record(probed)["mfu_peak_source"] == probed.source
