"""The tiny pipeline on a two-node SLURM cluster (launch/local_slurm.py), to its report: ``sbatch --nodes=2
launch/pipeline.sbatch`` runs every stage and the extraction as one launch across both nodes, one rank a node,
through launch/srun_deepspeed.sh (what launch/slurm.sbatch runs). Each stage's per-step losses, the extracted
features and the report's scores are the one-node 2-rank runs' (the session's fixtures, same configs and
overrides), and a rerun skips every step. One test covers multi-node for every stage and extraction and the
pipeline on SLURM."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from launching import LAUNCH_TIMEOUT, log_tail, records, sbatch, slurm_job, until

from m2fdist.pipeline import Pipeline, load

pytestmark = pytest.mark.launch

# The fixtures' own overrides (tests/conftest.py, tests/pipeline/conftest.py), stage by stage.
OVERRIDES = {
    "text": ["deepspeed=configs/ds/zero2_fp32.json", "train.epochs=6", "train.lr=3e-3", "train.encoder_lr=3e-3",
             "data.batch_size=2", "wandb.mode=disabled"],
    "audio": ["wandb.mode=disabled", "deepspeed=configs/ds/zero3.json", "train.epochs=4", "data.batch_size=4",
              "audio.seconds=2.0"],
    "visual": ["wandb.mode=disabled", "train.epochs=2", "data.batch_size=4", "data.num_frames=3",
               "data.num_workers=1"],
    "extract": ["data.num_frames=3"],
    "fusion": ["fusion.dim_audio=16", "wandb.mode=disabled", "train.max_steps=4", "data.eval_splits=[dev,test]",
               "precision=fp32"],
}
# Two ranks on two nodes sum gradients over TCP (gloo), two on one node through DeepSpeed's shared-memory
# all-reduce: a sum of two numbers is the same either way, the mean's rounding need not be.
TOLERANCE = {"rel": 1e-5, "abs": 1e-6}
FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def _arrays(features: Path) -> dict[str, np.ndarray]:
    """Every array of every dialog in a features folder, by member name."""
    out = {}
    for shard in sorted(features.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".npy"):
                    out[m.name] = np.load(io.BytesIO(tar.extractfile(m).read()))
    return out


def test_the_pipeline_runs_on_two_slurm_nodes_as_on_one(slurm, work, stage_runs, features, pipeline_runs,
                                                         tmp_path, capsys):
    env, _ = slurm
    runs, extracted, joblog = tmp_path / "runs", tmp_path / "features", tmp_path / "job.out"
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "dataset": "meld", "shards": str(work["shards"]), "features": str(extracted), "runs": str(runs),
        "ablations": False, **{s: f"configs/tiny/{s}.yaml" for s in ("text", "audio", "visual", "extract", "fusion")},
        "overrides": {**OVERRIDES, "text": [f"text.model={work['roberta']}", *OVERRIDES["text"]]}}))
    job = sbatch({**env, "M2FDIST_PYTHON": sys.executable}, "--nodes=2", f"--output={joblog}", "--time=60",
                 "launch/pipeline.sbatch", str(config))
    until(lambda: slurm_job(env, job).get("JobState") in FINISHED, 3 * LAUNCH_TIMEOUT,
          lambda: f"job {job}: {slurm_job(env, job)}\n{log_tail(joblog) if joblog.exists() else ''}")
    assert slurm_job(env, job)["JobState"] == "COMPLETED", log_tail(joblog)
    assert "[pipeline] done:" in joblog.read_text()
    for step, script in (("text", "train"), ("audio", "train"), ("visual", "train"), ("extract", "extract"),
                         ("fusion", "train")):
        log = (runs / f"{step}.log").read_text(errors="replace")
        # one deepspeed launcher on each node, one rank each, one world of two
        assert f"on n1 n2 , 1 per node: launch/{script}.py" in log, log[-3000:]
        assert "nnodes=2, num_local_procs=1, node_rank=0" in log and "node_rank=1" in log
    refs = {**stage_runs, "fusion": pipeline_runs / "fusion"}
    for stage, ref in refs.items():
        assert json.loads((runs / stage / "final.json").read_text())["world_size"] == 2
        got, want = records(runs / stage), records(ref)
        assert [r["step"] for r in got] == [r["step"] for r in want] and got, stage
        assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], **TOLERANCE), stage
    ours, theirs = _arrays(extracted), _arrays(features)
    assert ours.keys() == theirs.keys() and ours
    for name, array in ours.items():
        np.testing.assert_allclose(array, theirs[name], rtol=1e-4, atol=1e-5, err_msg=name)
    report = json.loads((runs / "report.json").read_text())
    fixture = json.loads((pipeline_runs / "fusion" / "final.json").read_text())
    for split in ("dev", "test"):
        assert report["splits"][split]["weighted_f1"] == pytest.approx(fixture["metrics"][split]["weighted_f1"])
    assert (runs / "model" / "fusion" / "model.safetensors").is_file()
    # a rerun (here, outside SLURM) finds every step finished
    before = {p: p.stat().st_mtime_ns for p in runs.glob("*/final.json")}
    capsys.readouterr()
    Pipeline(load(config, [])).run()
    said = capsys.readouterr().err
    assert all(f"{s}: finished earlier, skipped" in said for s in refs) and "(extracted)" in said
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/final.json")} == before
