"""DeepSpeed training on CPU under the real launchers (2 gloo ranks), with the tiny configs.

Each launch costs ~15 s, so one launch checks several things. The chain (fixtures in conftest.py) mirrors
the pipeline: text / audio / visual stages → export → extract → fusion; then resume, world-size change,
two nodes, accelerate, and the sweeps' commands.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from launching import (
    BIN,
    ENV,
    ROOT,
    SWEEPS,
    assert_loss_falls,
    common,
    concurrently,
    deepspeed,
    free_port,
    fusion_args,
    log_tail,
    records,
    run,
    sweep_sample,
)

from m2fdist.config.errors import ConfigError
from m2fdist.config.load import load_config
from m2fdist.runtime.deepspeed_config import deepspeed_config, precision_of
from m2fdist.runtime.precision import cpu_native_bf16

# -- configuration errors: found before any process group ----------------------------------------------


@pytest.mark.launch
def test_config_errors_are_clear(tiny_features, tmp_path):
    shards = f"data.shards={tiny_features}"
    cases = [
        (["nosuch.key=1"], "nosuch"),
        (["train.max_steps=lots"], "max_steps"),
        (["train.global_batch=7", "data.batch_size=2"], "not a multiple"),
        (["precision=fp16"], "fp16 needs a GPU"),
        (["stage=dance"], "stage must be one of"),
        (["fusion.modalities=AV"], "fusion=concat"),
        (["data.shards=/nowhere"], "data.shards=/nowhere: no such folder"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            cfg = load_config("configs/tiny/fusion.yaml", [shards, *overrides])
            deepspeed_config(cfg, world_size=2, device="cpu")
    auto = tmp_path / "auto.json"
    auto.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto"}))
    with pytest.raises(ConfigError, match="auto"):
        deepspeed_config(load_config("configs/tiny/fusion.yaml", [shards, f"deepspeed={auto}"]), 2, "cpu")
    cfg = load_config("configs/tiny/fusion.yaml", [shards, "train.global_batch=8", "data.batch_size=2"])
    ds, _ = deepspeed_config(cfg, world_size=2, device="cpu")
    assert (ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (2, 8)
    # the entry point reports them and exits 2 without starting anything
    proc = subprocess.run([sys.executable, "-m", "m2fdist", "train", "--config", "configs/tiny/fusion.yaml", shards,
                           "train.epochs=zero"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "config error" in proc.stderr and "epochs" in proc.stderr


@pytest.mark.unit
def test_precision_follows_the_hardware(tiny_features):
    """precision=auto: bf16 only where the device computes it natively; explicit choices and fp16 JSONs on GPUs."""
    shards = f"data.shards={tiny_features}"

    def chosen(overrides: list[str], device: str, native: bool) -> tuple[str, dict]:
        cfg = load_config("configs/tiny/fusion.yaml", [shards, *overrides])
        ds, precision = deepspeed_config(cfg, world_size=2, device=device, native_bf16=native)
        assert precision.dtype == precision_of(ds), "the JSON handed to DeepSpeed says what was chosen"
        return precision.dtype, ds

    assert load_config("configs/tiny/fusion.yaml", [shards]).precision == "auto"
    assert chosen([], "cpu", native=False)[0] == "fp32"  # AVX2-only CPU: the bf16 JSON is not followed
    assert chosen([], "cpu", native=True)[0] == "bf16"
    assert chosen(["precision=bf16"], "cpu", native=False)[0] == "bf16"  # asked for: honoured
    assert chosen(["deepspeed=configs/ds/zero2_fp32.json"], "cuda", native=True)[0] == "fp32"  # asked for
    assert chosen(["precision=json"], "cpu", native=False)[0] == "bf16"  # the JSON as it is, even emulated
    fp16_json = ["deepspeed=configs/ds/zero2_fp16.json"]
    assert chosen(fp16_json, "cuda", native=True)[0] == "fp16"  # fp16 asked for by the JSON, on a GPU
    assert chosen(fp16_json, "cpu", native=False)[0] == "fp32"  # ... and not supported on a CPU
    dtype, ds = chosen(["precision=fp16"], "cuda", native=False)
    assert dtype == "fp16" and ds["fp16"]["loss_scale"] == 0 and not ds["bf16"]["enabled"]
    # oneDNN capped below bf16 (as on an AVX2 machine) counts as no native bf16, whatever the flags say
    assert cpu_native_bf16({"avx512_bf16", "amx_bf16"}, onednn_isa="AVX2") is False
    assert cpu_native_bf16({"avx512_bf16"}, onednn_isa="") is True
    assert cpu_native_bf16({"avx2", "fma"}, onednn_isa="") is False
    with pytest.raises(ConfigError, match="precision must be one of"):
        load_config("configs/tiny/fusion.yaml", [shards, "precision=fp8"])


# -- stages ----------------------------------------------------------------------------------------------


def wandb_history(run_dir: Path) -> list[dict]:
    """History rows of an offline W&B run, read from its .wandb log (LevelDB log format, protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = next(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, chunks, buf = 7, [], b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            chunks.append(buf + chunk)
    rows = []
    for c in chunks:
        rec = pb.Record()
        rec.ParseFromString(c)
        if rec.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return rows


@pytest.mark.launch
def test_text_stage(text_run, work):
    assert_loss_falls(text_run)
    evals = records(text_run, "eval")
    assert {r["split"] for r in evals} == {"dev", "test"}
    for r in evals:
        assert {"accuracy", "weighted_f1", "macro_f1", "per_class_f1", "confusion_matrix"} <= r.keys()
        assert sum(map(sum, r["confusion_matrix"])) == r["count"]
    final = json.loads((text_run / "final.json").read_text())
    # rank 0's progress in the stage's log (not a terminal): whole lines, and one line per evaluation
    log = (work["base"] / "text.log").read_text()
    bars = [ln for ln in log.splitlines() if ln.startswith("[progress] text:")]
    assert "\r" not in log and bars and bars[-1].startswith(f"[progress] text: 100% {final['step']}/{final['step']}")
    assert "epoch" in bars[-1] and "loss" in bars[-1] and "samples/s" in bars[-1]
    said = [ln for ln in log.splitlines() if ln.startswith("[eval] text step")]
    assert len(said) == len(evals) and all(" accuracy " in ln and ", weighted F1 " in ln for ln in said)
    ckpts = text_run / "checkpoints"
    assert (ckpts / "best").read_text() == final["best_tag"] and (ckpts / final["best_tag"]).is_dir()
    assert final["precision"] == "fp32" and "fp32" in final["precision_reason"]  # zero2_fp32.json under auto
    assert len([p for p in ckpts.glob("step*") if p.is_dir()]) <= 3  # keep_last 2 + best
    # W&B (offline) holds the per-step loss, lr, grad norm, samples/s and the eval metrics
    history = wandb_history(text_run)
    logged = {k for row in history for k in row}
    assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "train/tokens_per_s",
            "train/tflops_per_device", "train/mfu", "dev/weighted_f1", "test/accuracy", "dev/f1_neutral"} <= logged
    # throughput in every log line: tokens/s, TFLOP/s and MFU against the CPU's measured matmul probe, said so
    train = records(text_run)
    assert all(r["tokens_per_s"] > r["samples_per_s"] > 0 and r["tflops_per_device"] > 0 for r in train)
    assert all(0 < r["mfu"] == pytest.approx(r["tflops_per_device"] / final["throughput"]["mfu_peak_tflops"])
               for r in train)
    assert "probe" in final["throughput"]["mfu_peak_source"] and final["throughput"]["per"] == "token"
    assert final["throughput"]["tokens_per_s"] > final["throughput"]["samples_per_s"] > 0
    assert "tok/s" in bars[-1] and "TFLOP/s" in bars[-1] and "MFU" in bars[-1]
    losses = [row["train/loss"] for row in history if "train/loss" in row]
    assert losses == pytest.approx([r["loss"] for r in records(text_run)])


@pytest.mark.launch
def test_text_export_predicts_like_the_engine(text_run, work):
    from m2fdist.data import LoaderConfig, make_loader
    from m2fdist.inference.load import load_exported

    # the export ships the best checkpoint on dev; predictions/ hold what the engine said at that checkpoint
    cfg, model = load_exported(text_run / "export")
    final = json.loads((text_run / "final.json").read_text())
    assert json.loads((text_run / "export" / "config.json").read_text())["tag"] == final["best_tag"]
    assert final["metrics"]["dev"]["weighted_f1"] == final["best_dev_weighted_f1"]
    assert final["last"]["step"] == final["step"] and set(final["last"]["metrics"]) == {"dev", "test"}
    live = {r["key"]: r for r in map(json.loads, (text_run / "predictions" / "dev.jsonl").read_text().splitlines())}
    loader = make_loader(work["shards"], "dev", LoaderConfig(batch_size=4, num_workers=0, train=False,
                                                            members=("json",)), rank=0, world_size=1)
    seen = 0
    with torch.no_grad():
        for b in loader:
            probs = model(**model.tokenize(b["text"], b["context_prev"], b["context_next"])).softmax(-1)
            for key, p, valid in zip(b["keys"], probs, b["valid"], strict=True):
                if valid:
                    torch.testing.assert_close(p, torch.tensor(live[key]["probs"]), atol=1e-5, rtol=1e-4)
                    seen += 1
    assert seen == len(live) > 0


@pytest.mark.launch
def test_extractor_stages_zero3_bf16(audio_run, visual_run):
    assert_loss_falls(audio_run)
    assert json.loads((audio_run / "config.json").read_text())["deepspeed"].endswith("zero3.json")
    assert records(visual_run) and all(r["loss"] == r["loss"] for r in records(visual_run))  # finite
    # the visual ranks loaded through a worker process each (m2fdist.data.handoff inside a launched rank)
    assert json.loads((visual_run / "config.json").read_text())["data"]["num_workers"] == 1
    for run_dir in (audio_run, visual_run):
        assert (run_dir / "export" / "model.safetensors").is_file()
        assert "weighted_f1" in records(run_dir, "eval")[-1]


@pytest.mark.launch
def test_extract_writes_dialog_features(features, meld_shards, launched):
    index = json.loads((features / "index.json").read_text())
    source = meld_shards[1]
    assert index["dims"] == {"text": 32, "audio": 16, "visual": 32}
    for split, entry in index["splits"].items():
        assert entry["dialogs"] == source["splits"][split]["dialogs"]
        assert entry["utterances"] == source["splits"][split]["samples"]
    # a rerun (in `launched`) found every part done and rewrote nothing but the index
    rc, before, after = launched["extract_again"]
    assert rc == 0, log_tail(features.parent / "extract2.log")
    assert before == after and len(before) == len(index["splits"]) * 2  # a stats file per split and rank


def _extract_again(features: Path, shards: Path) -> tuple[int, dict, dict]:
    """Extraction rerun over finished features: stats files' mtimes before and after. Its frame count, unset
    here, is the visual export's (3, as the first run was told)."""
    index = json.loads((features / "index.json").read_text())
    mtimes = lambda: {p.name: p.stat().st_mtime_ns for p in features.glob("*.stats.json")}  # noqa: E731
    before = mtimes()
    rc = deepspeed("launch/extract.py", "configs/tiny/extract.yaml",
                   [f"data.shards={shards}", f"extract.out={features}",
                    f"extract.text={index['extractors']['text']}", f"extract.audio={index['extractors']['audio']}",
                    f"extract.visual={index['extractors']['visual']}"], features.parent / "extract2.log", check=False)
    return rc, before, mtimes()


# -- fusion: exact resume, world-size change, two nodes, accelerate -----------------------------------------

# 4 train dialogs, 2 ranks, batch 1: two steps an epoch, so the step-3 checkpoint sits mid-epoch
RESUME = ["data.batch_size=1", "train.max_steps=8", "train.save_every=3", "train.log_every=1", "fusion.dropout=0.3",
          "precision=bf16"]


@pytest.mark.launch
def test_killed_run_resumes_exactly(work, features):
    a, b = work["base"] / "fusion_a", work["base"] / "fusion_b"
    _, rc = concurrently(
        lambda: deepspeed("launch/train.py", "configs/tiny/fusion.yaml", fusion_args(work, features, a, *RESUME),
                          work["base"] / "a.log"),
        lambda: deepspeed("launch/train.py", "configs/tiny/fusion.yaml", fusion_args(work, features, b, *RESUME),
                          work["base"] / "b.log", env={**ENV, "M2FDIST_KILL_AT_STEP": "4"}, check=False))
    assert rc != 0 and not (b / "final.json").exists()
    assert (b / "checkpoints" / "latest").read_text() == "step00000003"
    deepspeed("launch/train.py", "configs/tiny/fusion.yaml", fusion_args(work, features, b, *RESUME, "resume=auto"),
              work["base"] / "b2.log")
    loss_a = {r["step"]: r["loss"] for r in records(a)}
    resumed = [r for r in records(b) if r["step"] > 3][-5:]  # the resumed run's steps
    assert [r["step"] for r in resumed] == [4, 5, 6, 7, 8]
    assert [r["step"] for r in records(b)] == list(range(1, 9))  # the replayed step 4 is logged once
    assert [r["loss"] for r in resumed] == pytest.approx([loss_a[s] for s in range(4, 9)], rel=1e-6, abs=1e-7)


@pytest.mark.launch
def test_two_rank_checkpoint_resumes_on_one_rank(work, features):
    """The 2-rank run's last checkpoint continues in one process (through a universal checkpoint)."""
    b = work["base"] / "fusion_b"
    tag = (b / "checkpoints" / "latest").read_text()
    assert json.loads((b / "checkpoints" / tag / "m2fdist.json").read_text())["world_size"] == 2
    out = work["base"] / "fusion_one"
    run([sys.executable, "-m", "m2fdist", "train", "--config", "configs/tiny/fusion.yaml",
         *fusion_args(work, features, out, *RESUME, "train.max_steps=12", f"resume={b / 'checkpoints' / tag}")],
        work["base"] / "one.log")
    steps = [r["step"] for r in records(out)]
    assert steps[0] == 9 and steps[-1] == 12
    assert all(r["loss"] == r["loss"] for r in records(out))
    assert (b / "checkpoints" / f"{tag}_universal").is_dir()
    assert json.loads((out / "final.json").read_text())["world_size"] == 1


def _accelerate(work: dict, features: Path) -> tuple[int, Path]:
    out = work["base"] / "fusion_accelerate"
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", "configs/accelerate/cpu_zero2.yaml",
           "--main_process_port", str(free_port()), "launch/train.py", "--config", "configs/tiny/fusion.yaml",
           *fusion_args(work, features, out, "train.max_steps=3")]
    return run(cmd, work["base"] / "accelerate.log", check=False), out


def _sweep(name: str, work: dict, features: Path) -> tuple[int, Path]:
    """The sweep's command, run for one step on the tiny setup: 1 CPU rank (what is checked is the command and the
    config it trains with; two ranks are the other launches' concern), the tiny config and data."""
    argv, _ = sweep_sample(name)
    stage = "audio" if "audio" in name else "fusion"
    argv[argv.index("--config") + 1] = f"configs/tiny/{stage}.yaml"
    out = work["base"] / f"sweep_{name}"
    tiny = (fusion_args(work, features, out) if stage == "fusion" else
            [*common(work, out), "wandb.mode=disabled", "data.eval_splits=[dev]", "audio.seconds=1.0"])
    # the command names no --num_gpus: on CPU DeepSpeed starts LOCAL_SIZE ranks (one per NUMA node without it)
    rc = run([*argv[:2], "--master_port", str(free_port()), *argv[2:], *tiny, "train.max_steps=1"],
             work["base"] / f"sweep_{name}.log", env={**ENV, "LOCAL_SIZE": "1"}, check=False)
    return rc, out


@pytest.fixture(scope="module")
def launched(work, features, tmp_path_factory) -> dict:
    """Independent launches over the features (extraction again, accelerate, each sweep's
    command), two at a time; each test checks its own. (The rerun rewrites index.json atomically.)"""
    logs = tmp_path_factory.mktemp("launched")
    calls = {"extract_again": lambda: _extract_again(features, work["shards"]),
             "accelerate": lambda: _accelerate(work, features),
             **{name: (lambda n=name: _sweep(n, work, features)) for name in SWEEPS}}
    return {**dict(zip(calls, concurrently(*calls.values()), strict=True)), "logs": logs}


@pytest.mark.launch
def test_accelerate_launch(launched, work):
    rc, out = launched["accelerate"]
    assert rc == 0, log_tail(work["base"] / "accelerate.log")
    final = json.loads((out / "final.json").read_text())
    assert final["world_size"] == 2 and final["step"] == 3


@pytest.mark.launch
@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_command_runs(name, launched, work):
    argv, params = sweep_sample(name)
    assert argv[:2] == ["/usr/bin/env", "deepspeed"] and "launch/train.py" in argv
    assert all(f"{k}={v}" in argv for k, v in params.items())
    rc, out = launched[name]
    assert rc == 0, log_tail(work["base"] / f"sweep_{name}.log")
    saved = json.loads((out / "config.json").read_text())
    for key, value in params.items():
        section, field = key.split(".")
        assert saved[section][field] == value
