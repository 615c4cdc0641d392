"""Shared fixtures: synthetic MELD / IEMOCAP trees and their shards, built once per test session.

Everything is generated here (real mp4/avi/wav files through ffmpeg), so the suite needs no download.
Frames are small to keep the suite fast; the MTCNN test makes its own larger clip.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from filesystems import tmpfs
from launching import BIN, ENV, STOPPABLE_RUN, common, concurrently, deepspeed, fusion_args, local_slurm
from scheduling import TrainedStagesScheduling, check_grouped

from m2fdist.data.texts import shard_texts
from m2fdist.inference.export import export
from m2fdist.models.tiny_text import build_tiny_roberta
from m2fdist.pack import PackOptions, pack
from m2fdist.pipeline import Pipeline, PipelineConfig
from m2fdist.synth import synth_iemocap, synth_meld

# Every test carries exactly one of these (checked at collection): `make test-fast` runs the unit tests alone.
MARKERS = {
    "unit": "in this process: no launcher, no other process that loads the package (loader and pack workers, "
            "ffmpeg and a local HTTP server allowed); the inner loop, `make test-fast`",
    "launch": "starts real launchers or processes that load the package (deepspeed, accelerate, several ranks, the "
              "CLI in a subprocess, concurrent writers): the integration tests",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, what in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {what}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    bad = [f"{item.nodeid}: {sorted(m) or 'none'}" for item in items
           if len(m := {mark.name for mark in item.iter_markers()} & set(MARKERS)) != 1]
    if bad:
        raise pytest.UsageError("every test is marked exactly one of unit / launch:\n  " + "\n  ".join(bad))
    check_grouped(items, config.rootpath)


def pytest_xdist_make_scheduler(config: pytest.Config, log) -> TrainedStagesScheduling | None:
    """Under ``-n N`` (`make test`): the trained stages' modules in one worker (tests/scheduling.py); an explicit
    ``--dist`` other than load keeps pytest-xdist's own."""
    return TrainedStagesScheduling(config, log) if config.getvalue("dist") == "load" else None


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A two-node SLURM cluster on this machine (launch/local_slurm.py), up once for the tests that need one;
    every daemon it started is stopped by PID after. Yields the environment its clients need, and its folder."""
    folder = tmp_path_factory.mktemp("slurm")
    env = {**ENV, **local_slurm.up(folder), "M2FDIST_DEEPSPEED": str(BIN / "deepspeed")}
    try:
        yield env, folder
    finally:
        stopped = local_slurm.down(folder)
        assert len(stopped) == 4, stopped  # munged, slurmctld and both slurmd were ours to stop
        left = [p for _, p in local_slurm._pids(folder) if Path(f"/proc/{p}").exists()]
        assert not left, f"daemons left running: {left}"


@pytest.fixture
def small_fs(tmp_path):
    """``small_fs(size)``: a fresh tmpfs of that size under tmp_path; every one is unmounted at teardown, even when
    the test fails."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield lambda size, name="fs": stack.enter_context(tmpfs(tmp_path / name, size))


SMALL = (160, 96)
MAX_SIDE = 128
SHARD_SIZE = 7  # small and odd, so shards are many and uneven


@pytest.fixture(scope="session")
def meld_raw(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("meld") / "MELD.Raw"
    manifest = synth_meld(root, dialogs=4, seed=0, size=SMALL, bad_files=True, workers=2, progress=False)
    return root, manifest


@pytest.fixture(scope="session")
def meld_shards(meld_raw, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("meld_shards")
    index = pack("meld", meld_raw[0], out, workers=2, options=PackOptions(max_side=MAX_SIDE, max_seconds=20),
                 max_count=SHARD_SIZE, progress=False)
    return out, index


@pytest.fixture(scope="session")
def iemocap_raw(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("iemocap") / "IEMOCAP_full_release"
    manifest = synth_iemocap(root, dialogs=2, seed=1, size=SMALL, workers=2, progress=False)
    return root, manifest


@pytest.fixture(scope="session")
def iemocap_shards(iemocap_raw, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("iemocap_shards")
    index = pack("iemocap", iemocap_raw[0], out, workers=2, options=PackOptions(max_side=MAX_SIDE),
                 max_count=SHARD_SIZE, progress=False)
    return out, index


@pytest.fixture
def http_shards(meld_shards):
    """The test's shards folder, served read-only over HTTP on 127.0.0.1 from a thread."""
    handler = functools.partial(QuietHandler, directory=str(meld_shards[0]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the stdlib's name)
        pass


def csv_only_copy(root: Path, out: Path) -> Path:
    """The tree's three CSVs and nothing else: what a user who downloaded only MELD's annotations has."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("train_sent_emo.csv", "dev_sent_emo.csv", "test_sent_emo.csv"):
        (out / name).write_bytes((root / name).read_bytes())
    return out


# -- trained tiny stages, shared by training/ and pipeline/ tests ----------------------------------


@pytest.fixture(scope="session")
def work(meld_shards, tmp_path_factory) -> dict:
    """Shards, a tiny RoBERTa built from their text, and a scratch folder for runs."""
    shards, _ = meld_shards
    base = tmp_path_factory.mktemp("train")
    roberta = base / "roberta"
    build_tiny_roberta(roberta, shard_texts(shards), vocab_size=500, hidden_size=32, num_layers=2)  # tiny-text's
    return {"shards": shards, "roberta": roberta, "base": base}


def _text_run(work: dict) -> Path:
    """Text stage, ZeRO 2 in fp32 (so the export must match the live engine exactly), W&B offline."""
    out = work["base"] / "text"
    deepspeed("launch/train.py", "configs/tiny/text.yaml",
              [*common(work, out), "deepspeed=configs/ds/zero2_fp32.json", "train.epochs=6", "train.lr=3e-3",
               "train.encoder_lr=3e-3", "data.batch_size=2"], work["base"] / "text.log")
    # exports in this process (its imports are paid): the command runs in tests/training/test_checkpoint_faults.py
    export(out, "best")  # for extract
    # the final evaluation's weights are the latest checkpoint: the round trip compares against those
    export(out, "latest", out / "export_latest")
    return out


def train_and_export(work: dict, stage: str, overrides: list[str]) -> Path:
    out = work["base"] / stage
    deepspeed("launch/train.py", f"configs/tiny/{stage}.yaml", [*common(work, out), "wandb.mode=disabled", *overrides],
              work["base"] / f"{stage}.log")
    export(out, "best")
    return out


@pytest.fixture(scope="session")
def stage_runs(work) -> dict[str, Path]:
    """The three tiny extractor stages, trained and exported side by side (two launches at a time)."""
    text, audio, visual = concurrently(
        lambda: _text_run(work),
        lambda: train_and_export(work, "audio", ["deepspeed=configs/ds/zero3.json", "train.epochs=4",
                                                 "data.batch_size=4", "audio.seconds=2.0"]),
        # one loader worker per rank: batches of frames reach the rank through the worker's shared-memory slots
        lambda: train_and_export(work, "visual", ["train.epochs=2", "data.batch_size=4", "data.num_frames=3",
                                                  "data.num_workers=1"]))
    return {"text": text, "audio": audio, "visual": visual}


@pytest.fixture(scope="session")
def text_run(stage_runs) -> Path:
    return stage_runs["text"]


@pytest.fixture(scope="session")
def audio_run(stage_runs) -> Path:
    return stage_runs["audio"]


@pytest.fixture(scope="session")
def visual_run(stage_runs) -> Path:
    return stage_runs["visual"]


@pytest.fixture(scope="session")
def features(work, text_run, audio_run, visual_run) -> Path:
    out = work["base"] / "features"
    deepspeed("launch/extract.py", "configs/tiny/extract.yaml",
              [f"data.shards={work['shards']}", "data.num_frames=3", f"extract.out={out}",
               f"extract.text={text_run / 'export'}", f"extract.audio={audio_run / 'export'}",
               f"extract.visual={visual_run / 'export'}"], work["base"] / "extract.log")
    return out




@pytest.fixture(scope="session")
def unstopped_text_run(work) -> Callable[[], Future]:
    """``start()``: the uninterrupted run of STOPPABLE_RUN (text stage, 2 ranks), started in a thread at the first
    call, so it runs beside that caller's own launch; later callers get the same future, most likely done."""
    out = work["base"] / "text_unstopped"
    pool = ThreadPoolExecutor(1)
    futures: list[Future] = []

    def launch() -> Path:
        deepspeed("launch/train.py", "configs/tiny/text.yaml", [*common(work, out), *STOPPABLE_RUN],
                  work["base"] / "text_unstopped.log")
        return out

    def start() -> Future:
        if not futures:
            futures.append(pool.submit(launch))
        return futures[0]

    yield start
    pool.shutdown(wait=True)


# -- dialog features written in-process (extraction's format), for config checks without a launch -----------

TINY_DIMS = {"text": 32, "audio": 16, "visual": 32}


def write_features(out: Path, dims: dict[str, int], dialogs: int = 2, utterances: int = 3) -> Path:
    """A features folder as `m2fdist extract` writes it (random features, one shard per split, index.json)."""
    import json

    import numpy as np

    from m2fdist.common.labels import LABELS
    from m2fdist.config.schema import ExtractConfig
    from m2fdist.format.features import FeatureShardWriter
    from m2fdist.inference.extract import write_features_index

    rng = np.random.default_rng(0)
    names = LABELS["meld"]
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        writer = FeatureShardWriter(out / f"{split}-r000of001.tar")
        labels = dict.fromkeys(names, 0)
        for d in range(dialogs):
            y = rng.integers(0, len(names), utterances)
            feats = {n: rng.normal(size=(utterances, dim)).astype(np.float32) for n, dim in dims.items()}
            keys = [f"meld_{split}_d{d:04d}_u{u:02d}" for u in range(utterances)]
            meta = {"dataset": "meld", "split": split, "dialog": str(d), "keys": keys}
            writer.write(f"meld_{split}_dialog_{d}", meta, {**feats, "labels": y})
            for v in y:
                labels[names[v]] += 1
        writer.close()
        stats = {"shard": f"{split}-r000of001.tar", "split": split, "count": dialogs, "dialogs": dialogs,
                 "utterances": dialogs * utterances, "labels": labels, "dims": dims}
        (out / f"{split}-r000of001.stats.json").write_text(json.dumps(stats))
    cfg = ExtractConfig()
    cfg.data.shards = "in-process"
    write_features_index(out, cfg, world=1)
    return out


@pytest.fixture(scope="session")
def tiny_features(tmp_path_factory) -> Path:
    """Dialog features of the tiny extractors' widths (text 32, audio 16, visual 32), written in-process."""
    return write_features(tmp_path_factory.mktemp("tiny_features"), TINY_DIMS)


# -- the pipeline tests' runs folder (tests/pipeline), assembled once from the stages trained above ----------

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
