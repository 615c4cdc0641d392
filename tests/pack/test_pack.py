"""Packing: round trip, index counts, bad clips, resume after a kill, --part slices."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import MAX_SIDE, SHARD_SIZE

from m2fdist.common.media import audio_from_video, read_wav
from m2fdist.data.decode import sample_frames
from m2fdist.data.stream import read_samples
from m2fdist.pack import PackOptions, pack
from m2fdist.raw import read_iemocap, read_meld

REQUIRED = {"dataset", "split", "dialog", "utt", "speaker", "text", "label", "label_id", "start", "end", "source"}


def all_samples(shards: Path, index: dict) -> list[dict]:
    out = []
    for split, entry in index["splits"].items():
        for s in entry["shards"]:
            samples = list(read_samples([str(shards / s["url"])]))
            assert len(samples) == s["samples"]
            out += [dict(x, split=split, shard=s["url"]) for x in samples]
    return out


@pytest.mark.unit
def test_meld_round_trip(meld_raw, meld_shards):
    root, _ = meld_raw
    shards, index = meld_shards
    corpus = read_meld(root)
    by_key = {u.key: u for s in corpus.splits for u in corpus.utterances(s)}
    samples = all_samples(shards, index)
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys))
    assert set(keys) | {k for k in by_key if _skipped_by_pack(index, by_key[k])} == set(by_key)
    for s in samples:
        assert set(s) >= {"json", "mp4", "wav"} and "." not in s["__key__"]
        meta = json.loads(s["json"])
        assert REQUIRED <= meta.keys()
        u = by_key[s["__key__"]]
        assert (meta["text"], meta["label"], meta["speaker"]) == (u.text, u.label, u.speaker)
        assert meta["label_id"] == index["label_names"].index(meta["label"])
        assert meta["split"] == s["split"] == u.split
        assert (root / meta["source"]).is_file()
    # audio comes back exactly: the shard's wav equals a fresh 16 kHz mono decode of the clip
    for s in samples[:6]:
        meta = json.loads(s["json"])
        packed, rate = read_wav(s["wav"])
        assert rate == 16000
        np.testing.assert_array_equal(packed, audio_from_video(root / meta["source"], max_seconds=20))
        frames = sample_frames(s["mp4"])
        assert frames.shape[0] == 15 and max(frames.shape[1:3]) <= MAX_SIDE and frames.dtype == np.uint8
    # counts in index.json are what the shards hold
    for split, entry in index["splits"].items():
        mine = [s for s in samples if s["split"] == split]
        assert entry["samples"] == len(mine)
        labels = Counter(json.loads(s["json"])["label"] for s in mine)
        assert entry["labels"] == {n: labels.get(n, 0) for n in index["label_names"]}
        assert entry["dialogs"] == len({json.loads(s["json"])["dialog"] for s in mine})
        assert all(0 < sh["samples"] <= SHARD_SIZE or sh["dialogs"] == 1 for sh in entry["shards"])


def _skipped_by_pack(index: dict, u) -> bool:
    return any(s.get("dialog") == u.dialog and s.get("utt") == u.utt and s["split"] == u.split
               for s in index["skipped"])


@pytest.mark.unit
def test_dialogs_stay_together_and_in_order(meld_shards):
    shards, index = meld_shards
    seen: dict[tuple, str] = {}
    last: dict[tuple, int] = {}
    for s in all_samples(shards, index):
        meta = json.loads(s["json"])
        d = (meta["split"], meta["dialog"])
        assert seen.setdefault(d, s["shard"]) == s["shard"], "a dialog was split across shards"
        assert int(meta["utt"]) > last.get(d, -1)
        last[d] = int(meta["utt"])


@pytest.mark.unit
def test_meld_bad_clips_are_recorded(meld_raw, meld_shards):
    _, manifest = meld_raw
    shards, index = meld_shards
    reasons = {(s["split"], s.get("dialog"), s.get("utt")): s["reason"] for s in index["skipped"]}
    planted = {p["kind"]: [] for p in manifest["planted"]}
    for p in manifest["planted"]:
        planted[p["kind"]].append((p["split"], str(p["dialog"]), str(p["utt"])))
    for where in planted["corrupt"]:
        assert reasons[where] == "moov atom not found"
    for where in planted["missing"]:
        assert reasons[where] == "clip missing"
    # wrongly cut (minutes long) clips are trimmed to --max-seconds, and say so
    trimmed = {t["key"]: t for t in index["trimmed"]}
    assert len(trimmed) == len(planted["long"]) == 3
    for t in trimmed.values():
        assert t["source_duration"] > 60
    for s in all_samples(shards, index):
        if s["__key__"] in trimmed:
            assert json.loads(s["json"])["trimmed"] is True
            assert len(read_wav(s["wav"])[0]) == pytest.approx(20 * 16000, abs=16000)
    assert index["skipped_by_reason"]["moov atom not found"] == len(planted["corrupt"])


@pytest.mark.unit
def test_iemocap_round_trip_audio_is_exact(iemocap_raw, iemocap_shards):
    root, _ = iemocap_raw
    shards, index = iemocap_shards
    assert set(index["splits"]) == {"train", "dev", "test"}
    corpus = read_iemocap(root)
    assert sum(e["samples"] for e in index["splits"].values()) == sum(
        len(corpus.utterances(s)) for s in corpus.splits)
    for s in all_samples(shards, index)[:8]:
        meta = json.loads(s["json"])
        source = (root / meta["source"]["audio"]).read_bytes()
        np.testing.assert_array_equal(read_wav(s["wav"])[0], read_wav(source)[0])
        frames = sample_frames(s["mp4"])
        assert frames.shape[0] == 15 and frames.shape[2] <= MAX_SIDE


@pytest.mark.unit
def test_long_clips_can_be_skipped_and_options_are_guarded(meld_raw, tmp_path):
    root, manifest = meld_raw
    out = tmp_path / "skip"
    # part 0/1 of a plan restricted to the long clips' shards would be cleverer; a whole small pack is cheap
    index = pack("meld", root, out, workers=2, options=PackOptions(max_side=64, max_seconds=20, long_clips="skip"),
                 max_count=50, progress=False)
    long_skips = [s for s in index["skipped"] if "past --max-seconds" in s["reason"]]
    assert len(long_skips) == 3 and not index["trimmed"]
    with pytest.raises(ValueError, match="other options"):
        pack("meld", root, out, options=PackOptions(max_side=96), max_count=50, progress=False)


@pytest.mark.launch
def test_killed_pack_resumes(meld_raw, meld_shards, tmp_path):
    root, _ = meld_raw
    ref_dir, ref_index = meld_shards
    out = tmp_path / "resume"
    cmd = [sys.executable, "-m", "m2fdist", "pack", "meld", "--root", str(root), "--out", str(out),
           "--workers", "1", "--max-side", str(MAX_SIDE), "--max-seconds", "20", "--shard-size", str(SHARD_SIZE),
           "--no-progress"]
    proc = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.time() + 120
    while not list(out.glob("*.stats.json")) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert done, "nothing finished before the kill"
    assert not (out / "index.json").exists()
    subprocess.run(cmd, check=True, timeout=600)
    for p, mtime in done.items():
        assert p.stat().st_mtime_ns == mtime, f"{p.name} was packed again"
    index = json.loads((out / "index.json").read_text())
    assert [(s["url"], s["samples"]) for e in index["splits"].values() for s in e["shards"]] == [
        (s["url"], s["samples"]) for e in ref_index["splits"].values() for s in e["shards"]]
    for name in (s["url"] for e in index["splits"].values() for s in e["shards"]):
        keys = json.loads((out / name.replace(".tar", ".stats.json")).read_text())["keys"]
        assert keys == json.loads((ref_dir / name.replace(".tar", ".stats.json")).read_text())["keys"]
    assert not list(out.glob("*.tmp"))


@pytest.mark.unit
def test_parts_cover_the_corpus_once(iemocap_raw, iemocap_shards, tmp_path):
    root, _ = iemocap_raw
    _, ref_index = iemocap_shards
    options = PackOptions(max_side=MAX_SIDE)
    shared = tmp_path / "shared"
    first = pack("iemocap", root, shared, part="0/2", options=options, max_count=SHARD_SIZE, progress=False)
    assert first is None  # the other half is still missing
    part0 = {p.name for p in shared.glob("*.tar")}
    index = pack("iemocap", root, shared, part="1/2", options=options, max_count=SHARD_SIZE, progress=False)
    part1 = {p.name for p in shared.glob("*.tar")} - part0
    assert part0 and part1 and not part0 & part1
    keys = [k for p in sorted(shared.glob("*.stats.json")) for k in json.loads(p.read_text())["keys"]]
    assert len(keys) == len(set(keys)) == sum(e["samples"] for e in ref_index["splits"].values())
    for split, entry in index["splits"].items():
        ref = ref_index["splits"][split]
        assert (entry["samples"], entry["dialogs"], entry["labels"]) == (ref["samples"], ref["dialogs"], ref["labels"])
        assert [(s["url"], s["samples"]) for s in entry["shards"]] == [(s["url"], s["samples"]) for s in ref["shards"]]
    with pytest.raises(ValueError, match="0 <= i < n"):
        pack("iemocap", root, tmp_path / "x", part="2/2", options=options, progress=False)


@pytest.mark.unit
def test_pack_text_only_from_the_csvs_alone(meld_raw, tmp_path, capsys):
    from conftest import csv_only_copy

    from m2fdist.config.errors import ConfigError
    from m2fdist.config.load import load_config
    from m2fdist.data import LoaderConfig, make_loader
    from m2fdist.format.index import summary

    root, _ = meld_raw
    tree = csv_only_copy(root, tmp_path / "csv")
    out = tmp_path / "text"
    index = pack("meld", tree, out, options=PackOptions(modalities="text"), max_count=SHARD_SIZE, progress=True)
    n = sum(split["samples"] for split in index["splits"].values())
    assert f"[progress] packing: 100% {n}/{n} [" in capsys.readouterr().err  # one bar line in a log, not \r bars
    corpus = read_meld(tree, media=False)
    samples = all_samples(out, index)
    assert [s["__key__"] for s in samples] == [u.key for sp in corpus.splits for u in corpus.utterances(sp)]
    assert all({k for k in s if not k.startswith("__")} == {"json", "split", "shard"} for s in samples)
    assert "meld_dev_d0110_u07" in {s["__key__"] for s in samples}  # its clip is missing: not a skip here
    assert index["options"]["modalities"] == "text" and "text only" in summary(index)
    assert not any("clip" in s["reason"] for s in index["skipped"])
    # the text stage's loader reads them; a media stage is refused before launch
    batch = next(iter(make_loader(out, "train", LoaderConfig(batch_size=3, num_workers=0, members=("json",)))))
    assert len(batch["text"]) == 3 and "frames" not in batch and "audio" not in batch
    with pytest.raises(ConfigError, match="text-only samples"):
        load_config("configs/tiny/audio.yaml", [f"data.shards={out}"])
    with pytest.raises(ValueError, match="--modalities must be one of"):
        pack("meld", tree, tmp_path / "x", options=PackOptions(modalities="audio"), progress=False)
