"""What a launch leaves on the machine: JIT build locks and DeepSpeed's shared-memory buffers.

Both once hung the suite: a lock left by a killed build, and /dev/shm filled with buffers DeepSpeed never
deletes (66 MB per rank per launch) until the machine ran out of memory.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
from launching import BIN, ENV, fusion_args, run

from m2fdist.runtime.jit_lock import remove_stale_locks
from m2fdist.runtime.shm_buffers import PREFIX, remove_orphans

pytestmark = pytest.mark.launch


def test_stale_build_lock_is_removed(tmp_path):
    now = time.time()
    old, young = tmp_path / "a" / "lock", tmp_path / "b" / "lock"
    for lock, age in ((old, 3600), (young, 5)):
        lock.parent.mkdir()
        lock.touch()
        os.utime(lock, (now - age, now - age))
    held = tmp_path / "c" / "lock"  # an old lock that a live build still holds open
    held.parent.mkdir()
    fd = os.open(held, os.O_CREAT | os.O_EXCL)
    os.utime(held, (now - 3600, now - 3600))
    try:
        assert remove_stale_locks(tmp_path, stale_after=300, now=now, settle=0.01) == [old]
        assert not old.exists() and young.exists() and held.exists()
    finally:
        os.close(fd)
    assert remove_stale_locks(tmp_path, stale_after=300, now=now, settle=0.01) == [held]


def test_launch_survives_a_killed_build(work, features, tmp_path, monkeypatch):
    """A lock left by a process killed mid-build used to hang every later launch in init_distributed."""
    from m2fdist.runtime.jit_lock import extensions_root
    from m2fdist.runtime.process import own_extensions

    # where the fixtures' launches built the op: the environment's own folder, as in every rank (the test
    # process itself never chose it; torch's default ~/.cache folder is empty on a fresh machine)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", ENV.get("TORCH_EXTENSIONS_DIR", ""))
    if not ENV.get("TORCH_EXTENSIONS_DIR"):
        monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    own_extensions()
    built = extensions_root() / "deepspeed_shm_comm"
    assert (built / "deepspeed_shm_comm.so").is_file(), f"the fixtures' launches built no op in {built}"
    ext = tmp_path / "torch_extensions"
    shutil.copytree(built, ext / built.name)  # mtimes kept: ninja finds the build up to date
    lock = ext / built.name / "lock"
    lock.touch()
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "m2fdist", "train", "--config", "configs/tiny/fusion.yaml",
           *fusion_args(work, features, out, "train.max_steps=1")]
    log = tmp_path / "run.log"
    # PATH without this environment's bin folder (a script that never activated it): the build must still be
    # found up to date, not redone by whichever other ninja PATH holds (m2fdist.runtime.process.own_ninja)
    path = os.pathsep.join(p for p in ENV["PATH"].split(os.pathsep) if Path(p) != BIN)
    so = ext / built.name / f"{built.name}.so"
    built_at = so.stat().st_mtime_ns
    run(cmd, log, env={**ENV, "TORCH_EXTENSIONS_DIR": str(ext), "PATH": path}, timeout=300)
    assert "removed the stale build lock" in log.read_text()
    assert not lock.exists() and json.loads((out / "final.json").read_text())["step"] == 1
    assert so.stat().st_mtime_ns == built_at, "the JIT op was rebuilt"


def test_jit_builds_use_the_environments_ninja(monkeypatch):
    """Whatever PATH holds, ninja comes from beside this Python (one ninja version: builds stay up to date)."""
    import shutil

    from m2fdist.runtime.process import own_ninja

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert own_ninja() == BIN / "ninja"
    assert shutil.which("ninja") == str(BIN / "ninja")
    own_ninja()  # once is enough: PATH does not grow
    assert os.environ["PATH"] == f"{BIN}{os.pathsep}/usr/bin:/bin"


def test_jit_builds_go_to_the_environments_own_folder(monkeypatch, tmp_path):
    """Two environments no longer share (and rebuild) each other's ops; a folder the user names wins."""
    from m2fdist.runtime.jit_lock import extensions_root
    from m2fdist.runtime.process import own_extensions

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    assert sys.prefix != sys.base_prefix  # the suite runs in the project's virtual environment
    assert own_extensions() == str(Path(sys.prefix) / "torch_extensions")
    assert extensions_root() == Path(sys.prefix) / "torch_extensions"  # where torch builds, and locks are looked for
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert own_extensions() == str(tmp_path) and os.environ["TORCH_EXTENSIONS_DIR"] == str(tmp_path)


def test_orphaned_shm_buffers_are_removed(tmp_path):
    uid = os.getuid()
    names = {n: tmp_path / f"{PREFIX}_{uid}_127.0.0.1_{n}_0" for n in ("orphan", "mapped", "open")}
    other_user = tmp_path / f"{PREFIX}_{uid + 1}_127.0.0.1_1_0"
    for path in [*names.values(), other_user]:
        path.write_bytes(b"\0" * 4096)
    with names["mapped"].open("r+b") as f:
        mapped = mmap.mmap(f.fileno(), 4096)  # the file closed, its mapping alive: a rank mid-run
    fd = os.open(names["open"], os.O_RDWR)  # a rank between shm_open and mmap
    try:
        assert remove_orphans(tmp_path) == [names["orphan"]]
        assert names["mapped"].exists() and names["open"].exists() and other_user.exists()
    finally:
        mapped.close()
        os.close(fd)


def test_launches_leave_no_shm_buffers(text_run, work):
    """Each rank of the 2-rank text launch deleted its buffer after the last barrier."""
    port = re.search(r"--master_port[= ](\d+)", (work["base"] / "text.log").read_text()).group(1)
    assert (text_run / "final.json").is_file()
    assert not list(Path("/dev/shm").glob(f"{PREFIX}_{os.getuid()}_*_{port}_*"))


def test_ranks_share_the_cores_unless_told(monkeypatch):
    """The deepspeed launcher leaves OMP_NUM_THREADS unset; each rank then takes cores / local ranks threads."""
    import os

    import torch

    from m2fdist.runtime.process import share_cores

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setenv("LOCAL_SIZE", "2")
        assert share_cores() == max(1, len(os.sched_getaffinity(0)) // 2) == torch.get_num_threads()
        torch.set_num_threads(before)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's word wins
        assert share_cores() is None and torch.get_num_threads() == before
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setenv("LOCAL_SIZE", "1")  # one rank: torch's own default
        assert share_cores() is None and torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
