"""Node cleaners remove only what is provably orphaned (shared-memory buffers, JIT build locks), and the
launcher's env file example parses as DeepSpeed reads it."""

from __future__ import annotations

import mmap
import os
import sys
import time

import pytest
from launching import ROOT

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
