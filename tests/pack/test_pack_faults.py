"""Packing under faults: a killed pack worker ends the pack clearly and it resumes; hung or endless media are
clear media errors."""

from __future__ import annotations

import subprocess
import time
import wave
from pathlib import Path

import pytest

from m2fdist.common.media import MediaError, encode_utterance, ffmpeg_exe, probe

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


@pytest.mark.unit
def test_a_pack_onto_a_full_disk_says_so_and_leaves_no_partial_shard(small_raw, small_fs):
    from m2fdist.common.atomic import NoSpaceLeft, stray_temporaries
    from m2fdist.pack import PackOptions, pack

    out = small_fs("160k")  # the plan fits, the shards do not
    # the error crosses from the pack worker to here whole (it pickles as itself)
    with pytest.raises(NoSpaceLeft, match=r"no space left on device writing shard \S+ to .*\.tar \("):
        pack("meld", small_raw, out, workers=1, options=PackOptions(max_side=64), max_count=4, progress=False)
    assert stray_temporaries(out) == [] and not list(out.glob("*.tar"))
    assert not (out / "index.json").exists()


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


@pytest.mark.unit
def test_two_packs_into_one_folder_never_share_a_temporary(meld_raw, tmp_path):
    """Each writer fills a temporary of its own: a fixed ``{shard}.tar.tmp`` let a second pack truncate the
    first one's half-written shard."""
    from m2fdist.common import atomic
    from m2fdist.pack import PackOptions, pack

    first = atomic.temp_path_for(tmp_path / "x.tar")
    second = atomic.temp_path_for(tmp_path / "x.tar")
    assert first != second and {first, second} == set(atomic.stray_temporaries(tmp_path))
    out = tmp_path / "text"
    index = pack("meld", meld_raw[0], out, options=PackOptions(modalities="text"), progress=False)
    names = [s["url"] for split in index["splits"].values() for s in split["shards"]]
    again = tmp_path / "again"
    again.mkdir()
    planted = {again / f"{n}.tmp": f"another pack's {n}".encode() for n in names}  # the old fixed names
    for path, data in planted.items():
        path.write_bytes(data)
    pack("meld", meld_raw[0], again, options=PackOptions(modalities="text"), progress=False)
    assert all(path.read_bytes() == data for path, data in planted.items())
    assert atomic.stray_temporaries(again) == []  # and its own temporaries were all renamed into place
