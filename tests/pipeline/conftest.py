"""The pipeline tests' runs folder, assembled once from the stages the session's fixtures trained."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from launching import concurrently, deepspeed, fusion_args

from m2fdist.inference.export import export
from m2fdist.pipeline import Pipeline, PipelineConfig


@pytest.fixture(scope="session")
def pipeline_runs(work, text_run, audio_run, visual_run, features, tmp_path_factory) -> Path:
    """A pipeline runs folder assembled from the trained stages: fused model and the T ablation."""
    runs = tmp_path_factory.mktemp("pipeline") / "runs"
    runs.mkdir()
    for stage, src in (("text", text_run), ("audio", audio_run), ("visual", visual_run)):
        shutil.copytree(src, runs / stage, ignore=shutil.ignore_patterns("checkpoints", "wandb"))
    # the fused model and the T ablation are independent: two launches side by side
    concurrently(*(lambda name=name, extra=extra: deepspeed(
        "launch/train.py", "configs/tiny/fusion.yaml",
        fusion_args(work, features, runs / name, "train.max_steps=4", "data.eval_splits=[dev,test]", "precision=fp32",
                    *extra), runs / f"{name}.log")
        for name, extra in (("fusion", []), ("fusion_T", ["fusion.modalities=T", "fusion.fusion=concat"]))))
    export(runs / "fusion")  # the best checkpoint on dev, as the pipeline ships it
    Pipeline(PipelineConfig(runs=str(runs))).bundle()  # RUNS/model, what predict loads
    return runs
