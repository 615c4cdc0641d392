"""Fault injection: each bad case a careful user (or a crash) produces gives a clear error or a recorded skip,
and nothing that was finished is lost. Shard and index tampering lives in test_untrusted_shards.py."""

from __future__ import annotations

import json
import mmap
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import pytest
from launching import BIN, ENV, ROOT

from m2fdist.common import atomic
from m2fdist.common.media import MediaError, encode_utterance, ffmpeg_exe, probe
from m2fdist.config.errors import ConfigError
from m2fdist.config.load import load_config
from m2fdist.training import checkpoint
from m2fdist.training.tracking import Tracker

# -- checkpoints and completion markers -----------------------------------------------------------------


def fake_run(out: Path, steps: list[int], config: dict | None = None) -> Path:
    """An output_dir holding finished checkpoint tags (metadata only) and a metrics log, as a run leaves them."""
    ckpts = out / "checkpoints"
    for step in steps:
        tag = checkpoint.tag_for(step)
        atomic.write_json(ckpts / tag / checkpoint.META, {"step": step, "world_size": 2, "tag": tag,
                                                          "config": config})
    atomic.write_text(ckpts / "latest", checkpoint.tag_for(steps[-1]))
    atomic.write_text(out / "metrics.jsonl", "".join(json.dumps({"kind": "train", "step": s, "loss": 1.0}) + "\n"
                                                     for s in range(1, steps[-1] + 1)))
    return out


@pytest.fixture
def one_process(monkeypatch):
    """The env a launcher gives a world of one, restored afterwards (train.main would set it otherwise)."""
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(k, v)


@pytest.mark.unit
def test_fresh_run_refuses_an_earlier_runs_folder(tiny_features, tmp_path, capsys, one_process):
    from m2fdist.cli import main as cli

    out = fake_run(tmp_path / "run", [40, 60])
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    args = ["--config", "configs/tiny/fusion.yaml", f"data.shards={tiny_features}", f"output_dir={out}"]
    assert cli(["train", *args]) == 2
    err = capsys.readouterr().err
    assert "holds an earlier run (checkpoints, metrics.jsonl)" in err and "resume=auto" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before  # nothing touched


@pytest.mark.unit
def test_prune_never_removes_the_runs_own_saves(tmp_path):
    ckpts = fake_run(tmp_path / "run", [1, 2, 3, 4, 5]) / "checkpoints"
    atomic.write_text(ckpts / "best", "step00000001")
    # resumed from step 2 and saved step 3 again: 4 and 5 belong to the abandoned timeline
    checkpoint.prune(ckpts, keep_last=1, best_tag="step00000001", current="step00000003")
    assert checkpoint.complete_tags(ckpts) == ["step00000001", "step00000003"]


@pytest.mark.unit
def test_resume_says_what_changed_and_refuses_what_breaks_it(tiny_features, tmp_path, capsys, one_process):
    from m2fdist.cli import main as cli
    from m2fdist.training.trainer import check_resume

    base = [f"data.shards={tiny_features}", "data.batch_size=2"]
    saved = load_config("configs/tiny/fusion.yaml", [*base, f"output_dir={tmp_path / 'run'}"]).to_dict()
    out = fake_run(tmp_path / "run", [4], config=saved)
    args = ["--config", "configs/tiny/fusion.yaml", *base, f"output_dir={out}", "resume=auto"]
    assert cli(["train", *args, "data.batch_size=4", "fusion.num_layers=3"]) == 2
    err = capsys.readouterr().err
    assert "break an exact resume" in err and "data.batch_size: 2 → 4" in err and "fusion.num_layers" in err
    assert "allow_config_change=true" in err
    # harmless changes are said, not refused; breaking ones pass when asked
    check_resume(load_config("configs/tiny/fusion.yaml", [*base, f"output_dir={out}", "resume=auto",
                                                           "train.max_steps=9"]))
    assert "train.max_steps: 0 → 9" in capsys.readouterr().err
    check_resume(load_config("configs/tiny/fusion.yaml", [*base, f"output_dir={out}", "resume=auto",
                                                           "data.batch_size=4", "allow_config_change=true"]))
    assert "continuing despite: data.batch_size" in capsys.readouterr().err


@pytest.mark.unit
def test_pointers_must_name_tags(tmp_path, capsys):
    from m2fdist.cli import main as cli

    out = fake_run(tmp_path / "run", [4])
    (out / "config.json").write_text(json.dumps({"stage": "fusion"}))
    for evil in ("../../../etc", "/etc/passwd", "step00000004/../../x"):
        atomic.write_text(out / "checkpoints" / "latest", evil)
        with pytest.raises(ValueError, match="not a checkpoint tag"):
            checkpoint.resolve("auto", out)
        atomic.write_text(out / "checkpoints" / "best", evil)
        assert cli(["export", str(out)]) == 2
        assert "not a checkpoint tag" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        checkpoint.resolve("../step00000004", out)


@pytest.mark.launch
def test_failed_universal_conversion_shows_deepspeeds_error(tmp_path, monkeypatch):
    """A tag DeepSpeed cannot convert: its own message reaches the caller (on every rank: a broadcast)."""
    import torch.distributed as dist

    from m2fdist.runtime.process import free_port

    ckpts = fake_run(tmp_path / "run", [4]) / "checkpoints"  # metadata only: no DeepSpeed files
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        started = time.time()
        with pytest.raises(RuntimeError, match="universal checkpoint .* failed; DeepSpeed said:\n.+"):
            checkpoint.to_universal(ckpts, "step00000004")
        assert time.time() - started < 120
    finally:
        dist.destroy_process_group()


@pytest.mark.unit
def test_replayed_steps_are_logged_once(tmp_path):
    from omegaconf import OmegaConf

    from m2fdist.config.schema import WandbConfig

    out = tmp_path / "run"
    fake_run(out, [4])
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "train", "step": 5, "lo')  # torn by a kill mid-write
    tracker = Tracker(out, {}, True, OmegaConf.structured(WandbConfig(mode="disabled")))
    for step in range(3, 8):  # resumed from step 2's checkpoint: 3 and 4 replay
        tracker.log(step, {"loss": 0.5})
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7]


def _hammer(path: str, tag: int, n: int) -> None:
    for i in range(n):
        atomic.write_json(Path(path), {"writer": tag, "i": i, "pad": "x" * 4000})


@pytest.mark.launch
def test_concurrent_marker_writers_never_tear_it(tmp_path):
    """Two `pack --part` processes write pack.json at once: a reader always sees one whole file."""
    path = tmp_path / "pack.json"
    atomic.write_json(path, {"writer": -1})
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(path), t, 300)) for t in range(2)]
    for p in procs:
        p.start()
    reads = 0
    while any(p.is_alive() for p in procs):
        assert json.loads(path.read_text())["writer"] in (-1, 0, 1)
        reads += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert reads > 10 and atomic.stray_temporaries(tmp_path) == []


@pytest.mark.launch
def test_killed_export_leaves_the_previous_one_whole(text_run, tmp_path):
    from m2fdist.inference.load import load_exported

    out = tmp_path / "export"
    subprocess.run([str(BIN / "m2fdist"), "export", str(text_run), "--out", str(out)], cwd=ROOT, env=ENV,
                   check=True, capture_output=True)
    before = (out / "model.safetensors").read_bytes()
    for delay in (0.5, 2.0, 4.0):  # killed at different points: during imports, conversion, writing
        proc = subprocess.Popen([str(BIN / "m2fdist"), "export", str(text_run), "--tag", "latest", "--out", str(out)],
                                cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        cfg, _ = load_exported(out)  # whole: weights and config from one export, loadable
        tag = json.loads((out / "config.json").read_text())["tag"]
        assert tag in (json.loads((text_run / "final.json").read_text())["best_tag"],
                       (text_run / "checkpoints" / "latest").read_text())
        if tag == json.loads((text_run / "final.json").read_text())["best_tag"]:
            assert (out / "model.safetensors").read_bytes() == before


# -- packing: killed workers, hung or endless media -----------------------------------------------------


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory) -> Path:
    from m2fdist.synth import synth_meld

    root = tmp_path_factory.mktemp("faults") / "MELD.Raw"
    synth_meld(root, dialogs=2, seed=3, size=(96, 64), workers=2, progress=False, dev_dialogs=1, test_dialogs=1)
    return root


@pytest.mark.unit
def test_killed_pack_worker_ends_the_pack_clearly_and_resumes(small_raw, tmp_path, monkeypatch):
    from m2fdist.pack import PackOptions, pack
    from m2fdist.pack.run import KILL_ENV, PackWorkerDied

    out = tmp_path / "shards"
    options = PackOptions(max_side=64)
    monkeypatch.setenv(KILL_ENV, "dev-000000")  # that shard's worker is SIGKILLed, like an OOM kill
    started = time.time()
    with pytest.raises(PackWorkerDied, match="a pack worker died .* Run the same command again to resume"):
        pack("meld", small_raw, out, workers=2, options=options, max_count=4, progress=False)
    assert time.time() - started < 300
    assert not (out / "index.json").exists()
    monkeypatch.delenv(KILL_ENV)
    index = pack("meld", small_raw, out, workers=2, options=options, max_count=4, progress=False)
    assert index["splits"]["dev"]["samples"] > 0 and (out / "index.json").is_file()
    assert sum(e["samples"] for e in index["splits"].values()) + len(index["skipped"]) >= 10


def _clip_without_duration(path: Path, seconds: float) -> None:
    """Matroska written to a pipe: no Duration in its header, as some recorders and streams leave files."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
           f"testsrc=size=64x48:rate=10:d={seconds}", "-f", "lavfi", "-i",
           f"sine=frequency=300:sample_rate=16000:d={seconds}", "-c:v", "libx264",
           "-c:a", "aac", "-f", "matroska", "pipe:1"]
    path.write_bytes(subprocess.run(cmd, capture_output=True, check=True).stdout)


@pytest.mark.unit
def test_max_seconds_holds_without_a_declared_duration(tmp_path):
    clip = tmp_path / "endless.mkv"
    _clip_without_duration(clip, 4.0)
    assert probe(clip)[0] is None
    enc = encode_utterance(clip, tmp_path / "o.mp4", tmp_path / "o.wav", max_side=64, max_seconds=1.5)
    with wave.open(str(tmp_path / "o.wav")) as w:
        assert abs(w.getnframes() / w.getframerate() - 1.5) < 0.1
    assert enc.trimmed and enc.source_duration is None


@pytest.mark.unit
def test_hung_ffmpeg_is_a_media_error(tmp_path, monkeypatch):
    clip = tmp_path / "c.mkv"
    _clip_without_duration(clip, 1.0)
    monkeypatch.setenv("M2FDIST_FFMPEG_TIMEOUT", "0.001")
    with pytest.raises(MediaError, match="ffmpeg timed out after 0.001s"):
        probe(clip)


# -- nonsense config values -----------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("override, message", [
    ("train.log_every=0", "train.log_every must be >= 1"), ("train.lr=-1e-3", "train.lr must be > 0.0"),
    ("train.warmup_steps=-5", "train.warmup_steps must be >= 0"), ("data.num_workers=-1", "data.num_workers"),
    ("triplet.knn=0", "triplet.knn must be >= 1"), ("train.encoder_lr=-1", "train.encoder_lr"),
])
def test_nonsense_values_are_refused_before_launch(meld_shards, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/tiny/audio.yaml", [f"data.shards={meld_shards[0]}", override])


# -- node cleaners: only what is provably orphaned ------------------------------------------------------


@pytest.mark.unit
def test_shm_cleaner_leaves_what_it_cannot_prove(tmp_path, monkeypatch, capsys):
    from m2fdist.runtime.shm_buffers import PREFIX, remove_orphans

    uid = os.getuid()
    orphan = tmp_path / f"{PREFIX}_{uid}_127.0.0.1_1_0"
    foreign = tmp_path / f"{PREFIX}_{uid}_127.0.0.1_2_0"  # our name pattern, another user's file
    for p in (orphan, foreign):
        p.write_bytes(b"\0" * 4096)
    os.chown(foreign, uid + 1, -1)
    monkeypatch.setenv("M2FDIST_SHM_SHARED", "1")  # other containers share this /dev/shm
    assert remove_orphans(tmp_path) == [] and orphan.exists()
    assert "may not be visible here" in capsys.readouterr().err
    monkeypatch.delenv("M2FDIST_SHM_SHARED")
    with orphan.open("r+b") as f:
        mapped = mmap.mmap(f.fileno(), 4096)
    try:
        assert remove_orphans(tmp_path) == []  # mapped by a live process: not an orphan
    finally:
        mapped.close()
    assert remove_orphans(tmp_path) == [orphan] and foreign.exists()


@pytest.mark.unit
def test_jit_lock_on_a_network_filesystem_is_left_and_reported(tmp_path, capsys):
    from m2fdist.runtime.jit_lock import remove_stale_locks

    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir()
    lock.write_text("")
    old = time.time() - 3600
    os.utime(lock, (old, old))
    assert remove_stale_locks(tmp_path, settle=0, fs_kind="nfs4") == [] and lock.exists()
    assert "nfs4 filesystem, where a process on another node may hold it" in capsys.readouterr().err
    os.chown(lock, os.getuid() + 1, -1)
    assert remove_stale_locks(tmp_path, settle=0, fs_kind="") == [] and lock.exists()  # not ours
    os.chown(lock, os.getuid(), -1)
    assert remove_stale_locks(tmp_path, settle=0, fs_kind="") == [lock]


@pytest.mark.unit
def test_deepspeed_env_example_parses_as_deepspeed_reads_it():
    """DeepSpeed 0.19 splits every line at '=': no comment or blank line may be in the shipped example."""
    lines = (ROOT / "launch" / "deepspeed_env.example").read_text().splitlines()
    assert lines and all(line.split("=", 1)[0].isidentifier() and "=" in line for line in lines)
    assert ".deepspeed_env" in (ROOT / ".gitignore").read_text().split()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
