"""One live run per output folder: a second launch into a folder a live run holds is refused before it writes
anything, naming the holder; the ranks of the holding launch itself pass; the claim ends with its process."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from m2fdist.cli import main as cli
from m2fdist.training import runlock

pytestmark = pytest.mark.unit


def as_rank(monkeypatch, rank: int, port: int) -> None:
    for k, v in {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(k, v)


def test_a_launch_claims_its_folder_and_another_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "run"
    as_rank(monkeypatch, 0, 29001)
    runlock.claim(out)  # rank 0 of launch A
    try:
        holder = json.loads((out / runlock.LOCK).read_text())
        assert holder["launch"] == "127.0.0.1:29001" and holder["pid"] > 0
        as_rank(monkeypatch, 1, 29001)
        runlock.claim(out)  # rank 1 of the same launch passes
        for rank in (0, 1):  # every rank of launch B is refused
            as_rank(monkeypatch, rank, 29002)
            with pytest.raises(ValueError, match=r"is in use by another run \(launch 127.0.0.1:29001, pid \d+"):
                runlock.claim(out, wait=0.2)
    finally:
        runlock.release(out)
    as_rank(monkeypatch, 0, 29002)
    runlock.claim(out)  # once A is gone, B claims it
    runlock.release(out)


def test_a_rank_waits_for_its_rank_0_to_write_its_claim(tmp_path, monkeypatch):
    """Under load rank 1 met the lock taken by its own rank 0 before rank 0 had written who holds it (an old
    record of a dead run was still there), and refused its own launch; now it waits for the record."""
    out = tmp_path / "run"
    out.mkdir()
    lock = out / runlock.LOCK
    lock.write_text(json.dumps({"launch": "10.0.0.9:29500", "pid": 1, "host": "gone"}))
    as_rank(monkeypatch, 1, 29004)
    rank0 = lock.open("a+")
    fcntl.flock(rank0, fcntl.LOCK_EX)  # rank 0 has the lock, its record not written yet
    errors: list[BaseException] = []

    def rank1() -> None:
        try:
            runlock.claim(out, rank=1, wait=10)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    follower = threading.Thread(target=rank1)
    follower.start()
    time.sleep(0.5)
    rank0.seek(0)
    rank0.truncate()
    rank0.write(json.dumps({"launch": runlock.launch_id(), "pid": os.getpid(), "host": "here"}))
    rank0.flush()
    follower.join(timeout=10)
    rank0.close()
    assert not follower.is_alive() and errors == []


def test_train_refuses_a_folder_a_live_run_holds(tiny_features, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    out.mkdir()
    # a live run elsewhere: another process holding the claim, as rank 0 of its launch does
    hold = ("import fcntl, json, os, sys, time\n"
            f"f = open({str(out / runlock.LOCK)!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
            "f.write(json.dumps({'launch': '10.0.0.9:29500', 'pid': os.getpid(), 'host': 'node7'})); f.flush()\n"
            "print('held', flush=True); time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        as_rank(monkeypatch, 0, 29003)
        rc = cli(["train", "--config", "configs/tiny/fusion.yaml", f"data.shards={tiny_features}",
                  f"output_dir={out}", "wandb.mode=disabled"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1
        assert f"is in use by another run (launch 10.0.0.9:29500, pid {holder.pid} on node7" in err[0]
        assert sorted(p.name for p in out.iterdir()) == [runlock.LOCK]  # nothing was written
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    as_rank(monkeypatch, 0, 29004)
    runlock.claim(out)  # the dead holder's claim went with its process
    runlock.release(out)
