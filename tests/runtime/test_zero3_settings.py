"""The ZeRO-3 settings a run derives from its DeepSpeed JSON: partitioned building, gather caps, dtype of the
parameters built outside ``zero.Init``."""

from __future__ import annotations

import pytest
import torch

from m2fdist.runtime import deepspeed_config as ds_settings

pytestmark = pytest.mark.unit


def test_only_zero3_builds_partitioned_and_transformers_sees_it_while_it_is_held():
    from transformers.integrations import is_deepspeed_zero3_enabled

    assert ds_settings.partition_at_load({"zero_optimization": {"stage": 2}}) is None
    held = ds_settings.partition_at_load({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
    assert held is not None and is_deepspeed_zero3_enabled()
    del held
    assert not is_deepspeed_zero3_enabled()  # a weak reference: gone with the object


def test_the_gather_caps_are_a_share_of_the_model_and_never_override_the_json():
    ds = {"zero_optimization": {"stage": 3, "stage3_max_reuse_distance": 7}}
    assert ds_settings.cap_stage3_gathers(ds, 6400) == {"stage3_max_live_parameters": 100}  # 1/64
    assert ds["zero_optimization"] == {"stage": 3, "stage3_max_reuse_distance": 7, "stage3_max_live_parameters": 100}
    assert ds_settings.cap_stage3_gathers({"zero_optimization": {"stage": 2}}, 6400) == {}


def test_parameters_outside_zero_init_take_the_runs_dtype_and_partitioned_ones_are_left():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    partitioned = model[0].weight
    partitioned.ds_id = 0  # what zero.Init marks its parameters with
    cast = ds_settings.cast_unpartitioned(model, {"bf16": {"enabled": True}})
    assert cast == 3 and partitioned.dtype == torch.float32
    assert model[0].bias.dtype == model[1].weight.dtype == torch.bfloat16
    assert ds_settings.cast_unpartitioned(model, {"fp16": {"enabled": True}}) == 3  # to fp16 now
    assert ds_settings.cast_unpartitioned(torch.nn.Linear(2, 2), {}) == 0  # fp32 runs: nothing to do
