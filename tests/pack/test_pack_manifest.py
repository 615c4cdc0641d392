"""``m2fdist pack manifest``: anyone's labelled dialogs into the same shards as MELD's and IEMOCAP's, text only and
with clips, the label set the data's own, every row left out recorded with its line."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest
from conftest import MAX_SIDE
from manifests import LABELS, clips_csv, synth_rows, text_jsonl
from test_pack import all_samples

from m2fdist.cli import main as cli
from m2fdist.common.media import read_wav
from m2fdist.data.decode import sample_frames
from m2fdist.pack import PackOptions, pack
from m2fdist.raw.iemocap import dev_dialogs

pytestmark = pytest.mark.unit


def _check_counts(index: dict, samples: list[dict]) -> None:
    """index.json's per-split counts and label ids are what the shards hold, in the index's own label order."""
    for s in samples:
        meta = json.loads(s["json"])
        assert meta["label_id"] == index["label_names"].index(meta["label"]) and meta["dataset"] == "manifest"
        assert meta["split"] == s["split"] and "." not in s["__key__"]
    for split, entry in index["splits"].items():
        labels = Counter(json.loads(s["json"])["label"] for s in samples if s["split"] == split)
        assert entry["labels"] == {n: labels.get(n, 0) for n in index["label_names"]}


def test_a_text_only_jsonl_manifest(meld_raw, tmp_path):
    manifest = text_jsonl(meld_raw[0], tmp_path / "episodes.jsonl")
    rc = cli(["pack", "manifest", "--manifest", str(manifest), "--out", str(tmp_path / "shards"),
              "--modalities", "text", "--shard-size", "7", "--no-progress"])
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert rc == 0 and index["dataset"] == "manifest" and index["label_names"] == list(LABELS)
    assert index["options"]["modalities"] == "text" and set(index["splits"]) == {"train", "dev", "test"}
    samples = all_samples(tmp_path / "shards", index)
    assert all(set(s) == {"__key__", "__url__", "json", "split", "shard"} for s in samples)  # json only
    _check_counts(index, samples)
    rows = synth_rows(meld_raw[0])
    unlabelled = [n for n, r in enumerate(rows, 1) if r["label"] == "contempt"]  # MELD's planted bad label
    assert len(samples) == len(rows) - len(unlabelled)
    assert [(s["reason"], s["source"]) for s in index["skipped"]] == [("no label", f"episodes.jsonl:{n}")
                                                                       for n in unlabelled]
    # a dialog's samples are in utt order and carry their neighbours, whatever the manifest's order and numbering
    first = [json.loads(s["json"]) for s in samples if json.loads(s["json"])["dialog"] == "episode-dev-0"]
    assert [m["utt"] for m in first] == [str(10 * i + 5) for i in range(len(first))]
    assert first[1]["context_prev"][-1]["text"] == first[0]["text"]


def test_a_csv_manifest_of_clips_and_spans_of_recordings(meld_raw, iemocap_raw, tmp_path):
    (tmp_path / "lab").mkdir()
    manifest, planted = clips_csv(meld_raw[0], iemocap_raw[0], tmp_path / "lab" / "clips.csv")
    out = tmp_path / "shards"
    index = pack("manifest", manifest, out, workers=2, options=PackOptions(max_side=MAX_SIDE, max_seconds=20),
                 max_count=9, progress=False, reader_options={"dev_fraction": 0.5, "dev_seed": 0})
    assert index["label_names"] == list(LABELS) and index["options"]["dev_fraction"] == 0.5
    skipped = {s["source"]: s["reason"] for s in index["skipped"]}
    assert {n: skipped[f"clips.csv:{n}"] for n in planted["unlabelled"]} == dict.fromkeys(planted["unlabelled"],
                                                                                          "no label")
    (line,) = planted["missing"]
    assert skipped[f"clips.csv:{line}"].startswith("video file missing: ")
    corrupt = [s for s in index["skipped"] if s["source"].endswith("dia125_utt3.mp4")]  # found when decoding it
    assert len(corrupt) == 1 and corrupt[0]["split"] == "train"
    samples = all_samples(out, index)
    assert len(samples) + len(index["skipped"]) == planted["rows"]
    _check_counts(index, samples)
    spans = iemocap_spans = 0
    for s in samples:
        assert {"json", "mp4", "wav"} <= set(s)
        meta = json.loads(s["json"])
        wave, rate = read_wav(s["wav"])
        frames = sample_frames(s["mp4"], 3)
        assert rate == 16000 and frames.shape[0] == 3 and max(frames.shape[1:3]) <= MAX_SIDE
        if meta["dialog"].startswith("Ses"):  # a span of the dialog's avi, its audio the turn's own wav
            iemocap_spans += 1
            assert abs(len(wave) / rate - (meta["end"] - meta["start"])) < 0.1 and meta["end"] > meta["start"]
            spans += bool(np.abs(wave).max() > 0)
    assert iemocap_spans and spans == iemocap_spans
    # the train dialogs (MELD's train rows and session 1's, which name no split) are split by IEMOCAP's seeded draw
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    trainable = {r["dialog"] for r in rows if r["split"] in ("", "train") and r["label"]}
    splits = {json.loads(s["json"])["dialog"]: s["split"] for s in samples}
    held = dev_dialogs(sorted(trainable), 0.5, 0)
    assert {d for d in trainable if splits.get(d) == "dev"} == held and held
    assert {splits[d] for d in splits if d.startswith("Ses05")} == {"test"}
