"""Atomic writes publish files and folders with the modes ordinary ones would get, whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from m2fdist.common import atomic

pytestmark = pytest.mark.unit


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_published_files_and_folders_get_the_umask_modes(tmp_path, umask):
    """tempfile's 0600 / 0700 made index.json unreadable and an export unlistable for the rest of a group."""
    assert atomic.umask() == umask
    (tmp_path / "plain.txt").write_text("x")  # what an ordinary write gives: the reference
    (tmp_path / "plain").mkdir()
    assert mode(atomic.write_json(tmp_path / "index.json", {"a": 1})) == mode(tmp_path / "plain.txt") == 0o666 & ~umask
    tmp = atomic.temp_path_for(tmp_path / "shard.tar")  # a shard filled, then renamed into place
    assert mode(tmp) == 0o666 & ~umask
    folder = atomic.temp_dir_for(tmp_path / "export")
    (folder / "model.safetensors").write_bytes(b"")
    published = atomic.publish_dir(folder, tmp_path / "export")
    assert mode(published) == mode(tmp_path / "plain") == 0o777 & ~umask
    assert mode(published / "model.safetensors") == 0o666 & ~umask
    # replacing an earlier one gives the new one the same modes, and leaves no temporary behind
    again = atomic.temp_dir_for(tmp_path / "export")
    assert mode(atomic.publish_dir(again, tmp_path / "export")) == 0o777 & ~umask
    assert mode(atomic.write_text(tmp_path / "index.json", "{}")) == 0o666 & ~umask
    assert atomic.stray_temporaries(tmp_path) == [tmp]
