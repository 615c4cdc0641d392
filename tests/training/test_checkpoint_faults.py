"""Faults around checkpoints and completion markers: a fresh run never lands on an earlier one, a resume says
what changed, pointers must name tags, a killed export or a torn marker leaves what was finished whole, a full
disk during a save or an export says so and leaves the previous checkpoint, ``latest`` and export whole."""

from __future__ import annotations

import json
import multiprocessing as mp
import signal
import subprocess
import time
from pathlib import Path

import pytest
from filesystems import fill
from launching import BIN, ENV, ROOT, deepspeed, log_tail

from m2fdist.common import atomic
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


@pytest.mark.launch
def test_a_full_disk_during_a_save_or_an_export_says_so_and_keeps_the_last_whole(tiny_features, small_fs, tmp_path):
    from m2fdist.inference.export import export

    # one fp32 save of the tiny fusion stage on 2 ranks is ~0.9 MB: the first fits, the second does not
    out, log = small_fs("1300k", "run_fs") / "run", tmp_path / "run.log"
    rc = deepspeed("launch/train.py", "configs/tiny/fusion.yaml",
                   [f"data.shards={tiny_features}", f"output_dir={out}", "data.batch_size=1", "train.max_steps=4",
                    "train.save_every=1", "data.eval_splits=[dev]", "wandb.mode=disabled", "precision=fp32"],
                   log, check=False)
    text, ckpt = log.read_text(errors="replace"), out / "checkpoints"
    assert rc == 1, log_tail(log)
    said = "no space left on device writing checkpoint step00000002 (rank "
    assert text.count(said) >= 2 and f"to {ckpt / 'step00000002'} (" in text, log_tail(log)  # each rank said it
    assert checkpoint.read_pointer(ckpt, "latest") == "step00000001"
    assert checkpoint.complete_tags(ckpt) == ["step00000001"] and not (ckpt / "step00000002").exists()
    assert not (out / "final.json").exists()

    # the checkpoint left is whole: it exports; an export onto a full disk then leaves that export as it was
    fs = small_fs("512k", "export_fs")
    first = export(out, "latest", fs / "export")
    before = {p.name: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    fill(fs)
    with pytest.raises(atomic.NoSpaceLeft, match=f"no space left on device writing the export of step00000001 "
                                                 f"to {fs / 'export'} "):
        export(out, "latest", fs / "export")
    assert {p.name: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before
    assert atomic.stray_temporaries(fs) == []
