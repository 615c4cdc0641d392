"""Shared fixtures: synthetic MELD / IEMOCAP trees and their shards, built once per test session.

Everything is generated here (real mp4/avi/wav files through ffmpeg), so the suite needs no download.
Frames are small to keep the suite fast; the MTCNN test makes its own larger clip.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from m2fdist.pack import PackOptions, pack
from m2fdist.synth import synth_iemocap, synth_meld

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
