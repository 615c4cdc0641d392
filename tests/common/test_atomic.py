"""A full disk, on a real full filesystem (a small tmpfs): every atomic write and every guarded save says "no space
left" and names the path, leaves the earlier file whole and removes what it had half-written."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from filesystems import fill

from m2fdist.common import atomic

pytestmark = pytest.mark.unit


def test_a_marker_written_onto_a_full_disk_says_so_and_leaves_the_old_one(small_fs):
    fs = small_fs("256k")
    marker = atomic.write_json(fs / "final.json", {"step": 1})
    fill(fs)
    with pytest.raises(atomic.NoSpaceLeft, match=r"no space left on device writing final.json to .*final.json") as e:
        atomic.write_json(marker, {"step": 2, "pad": "x" * 100_000})
    assert e.value.errno == errno.ENOSPC and isinstance(e.value, OSError)  # `except OSError` still catches it
    assert json.loads(marker.read_text()) == {"step": 1}
    assert atomic.stray_temporaries(fs) == []


def test_torch_save_onto_a_full_disk_is_named_no_space_and_its_partial_file_removed(small_fs):
    fs = small_fs("512k")
    fill(fs, leave=64 << 10)
    target = fs / "mp_rank_00_model_states.pt"
    # torch's own error carries no errno ("[enforce fail at inline_container.cc] unexpected pos"): the free space
    # left on the filesystem is what tells a full disk
    with pytest.raises(atomic.NoSpaceLeft, match="no space left on device writing a checkpoint") as e:
        with atomic.guard_space(target, "a checkpoint", partial=[target]):
            torch.save({"w": torch.zeros(1 << 18)}, target)
    assert isinstance(e.value.__cause__, RuntimeError) and "No space" not in str(e.value.__cause__)
    assert not target.exists()


def test_a_failure_with_space_left_stays_what_it_was(tmp_path):
    partial = tmp_path / "half.bin"
    partial.write_bytes(b"half")
    with pytest.raises(RuntimeError, match="not a disk problem"), atomic.guard_space(tmp_path, "x", [partial]):
        raise RuntimeError("not a disk problem")
    assert not partial.exists()  # removed all the same
    err = OSError(errno.EIO, "I/O error")
    assert not atomic.is_no_space(err, tmp_path)  # an errno that says what it is, is believed
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert atomic.is_no_space(wrapped, tmp_path)  # ENOSPC anywhere in the chain
    assert not atomic.is_no_space(KeyboardInterrupt(), tmp_path)
