"""The synthetic corpora must look like the real ones to a reader (layouts, encodings, codecs, MELD's bad
files) and must carry learnable, per-modality ambiguous cues. Media are tiny so this stays fast on CPU."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import wave
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from m2fdist.common.labels import IEMOCAP_LABELS, MELD_LABELS
from m2fdist.common.media import MediaError, ffmpeg_exe, probe
from m2fdist.synth import CueConfig, synth_iemocap, synth_meld
from m2fdist.synth import cues as C
from m2fdist.synth.iemocap import plan_dialog
from m2fdist.synth.meld import COLUMNS, FOLDERS, SENTIMENT, dialog_ids, plan
from m2fdist.synth.render import voice

pytestmark = pytest.mark.unit


def _header(path: Path) -> str:
    return subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True, timeout=60
    ).stderr


def _ms(stamp: str) -> int:
    h, m, rest = stamp.split(":")
    s, milli = rest.split(",")
    return ((int(h) * 60 + int(m)) * 60 + int(s)) * 1000 + int(milli)


@pytest.fixture(scope="module")
def meld_bad(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bad") / "MELD.Raw"
    return out, synth_meld(out, dialogs=3, seed=3, size=(160, 96), bad_files=True, progress=False)


@pytest.fixture(scope="module")
def meld_small(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("small") / "MELD.Raw"
    return out, synth_meld(out, dialogs=1, seed=5, size=(320, 180), progress=False)


@pytest.fixture(scope="module")
def iemocap(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("iem") / "IEMOCAP_full_release"
    return out, synth_iemocap(out, dialogs=1, seed=4, size=(160, 96), progress=False)


def test_dialog_ids_keep_the_special_ones():
    assert dialog_ids(2, {220: 1, 38: 5}) == [38, 220]
    assert dialog_ids(5, {125: 4, 309: 1}) == [0, 1, 2, 125, 309]
    assert dialog_ids(3, {}) == [0, 1, 2]


def test_split_sizes_follow_meld_unless_asked(tmp_path, capsys):
    from m2fdist.cli import main as cli

    dialogs = lambda rows: {k: len({u.dialog for u in v}) for k, v in rows.items()}  # noqa: E731
    assert dialogs(plan(40, seed=0, bad_files=False, cfg=CueConfig())[0]) == {"train": 40, "dev": 4, "test": 11}
    rows, _ = plan(40, seed=0, bad_files=False, cfg=CueConfig(), dev_dialogs=9, test_dialogs=30)
    assert dialogs(rows) == {"train": 40, "dev": 9, "test": 30}
    with pytest.raises(ValueError, match="test: 0 dialogs"):
        plan(40, seed=0, bad_files=False, cfg=CueConfig(), test_dialogs=0)
    assert cli(["synth", "--layout", "iemocap", "--out", str(tmp_path / "i"), "--test-dialogs", "9"]) == 2
    assert cli(["synth", "--layout", "meld", "--out", str(tmp_path / "m"), "--dev-dialogs", "0"]) == 2
    assert "dev: 0 dialogs" in capsys.readouterr().err and not (tmp_path / "m").exists()


def test_meld_csvs_are_cp1252_and_match_the_manifest(meld_bad):
    out, manifest = meld_bad
    assert json.loads((out / "synth_manifest.json").read_text(encoding="utf-8")) == manifest
    rows_seen = []
    for split in FOLDERS:
        raw = (out / f"{split}_sent_emo.csv").read_bytes()
        with pytest.raises(UnicodeDecodeError):
            raw.decode("utf-8")
        rows = list(csv.reader(io.StringIO(raw.decode("cp1252"), newline="")))
        assert rows[0] == COLUMNS
        for i, row in enumerate(rows[1:], start=1):
            rec = dict(zip(COLUMNS, row, strict=True))
            assert int(rec["Sr No."]) == i
            assert rec["Sentiment"] == SENTIMENT[rec["Emotion"]]
            assert 1 <= int(rec["Season"]) <= 10 and 1 <= int(rec["Episode"]) <= 24
            rows_seen.append((split, int(rec["Dialogue_ID"]), int(rec["Utterance_ID"]), rec))
    all_raw = b"".join((out / f"{s}_sent_emo.csv").read_bytes() for s in FOLDERS)
    assert all_raw.count(b"\x92") >= 3 and all_raw.count(b"\x85") >= 1
    truth = manifest["utterances"]
    assert len(truth) == len(rows_seen)
    for (split, d, u, rec), m in zip(rows_seen, truth, strict=True):
        assert (split, d, u, rec["Utterance"], rec["Emotion"]) == (
            m["split"],
            m["dialog"],
            m["utt"],
            m["text"],
            m["label"],
        )
        assert _ms(rec["EndTime"]) - _ms(rec["StartTime"]) == round(m["duration"] * 1000)
        assert 1.0 <= m["duration"] <= 3.0
    labels = Counter(m["label"] for m in truth)
    assert set(labels) - set(MELD_LABELS) == {"contempt"} and labels["contempt"] == 1
    by_dialog: dict[tuple[str, int], list[dict]] = {}
    for m in truth:
        by_dialog.setdefault((m["split"], m["dialog"]), []).append(m)
    for utts in by_dialog.values():
        assert 3 <= len(utts) <= 8 and [m["utt"] for m in utts] == list(range(len(utts)))
        assert all(
            a["end"] <= b["start"] for a, b in zip(utts, utts[1:], strict=False)
        )  # consecutive within a dialog
    assert {(s, d) for s, d in by_dialog} >= {
        ("train", 125),
        ("train", 309),
        ("dev", 110),
        ("test", 220),
        ("test", 38),
    }


def test_meld_clips_and_planted_bad_files(meld_bad):
    out, manifest = meld_bad
    planted = manifest["planted"]
    kinds = Counter(p["kind"] for p in planted)
    assert kinds == {"corrupt": 1, "missing": 1, "long": 3, "no_row": 3, "twin": 2, "bad_label": 1}
    for m in manifest["utterances"]:
        assert (m["clip"] is None) == ((m["split"], m["dialog"], m["utt"]) == ("dev", 110, 7))
        if m["clip"] is not None:
            assert (out / m["clip"]).is_file()
    where = {p["kind"]: p for p in planted}
    assert not (out / where["missing"]["path"]).exists()
    with pytest.raises(MediaError, match="moov atom not found"):
        probe(out / "train_splits/dia125_utt3.mp4")
    for name in (
        "output_repeated_splits_test/dia220_utt0.mp4",
        "output_repeated_splits_test/dia38_utt4.mp4",
        "train_splits/dia309_utt0.mp4",
    ):
        duration, has_video, has_audio = probe(out / name)
        assert duration is not None and abs(duration - 100.0) < 0.5 and has_video and has_audio
    keys = {(m["split"], m["dialog"], m["utt"]) for m in manifest["utterances"]}
    for p in planted:
        if p["kind"] == "no_row":
            assert (out / p["path"]).is_file() and (p["split"], p["dialog"], p["utt"]) not in keys
        if p["kind"] == "twin":
            assert Path(p["path"]).name == f"final_videos_testdia{p['dialog']}_utt{p['utt']}.mp4"
            original = out / FOLDERS["test"] / f"dia{p['dialog']}_utt{p['utt']}.mp4"
            assert (out / p["path"]).read_bytes() == original.read_bytes()
    header = _header(out / "train_splits/dia0_utt0.mp4")
    assert re.search(r"Video: h264 .*yuv420p.*160x96", header)
    assert re.search(r"Audio: aac .*48000 Hz, stereo", header)
    duration, _, _ = probe(out / "train_splits/dia0_utt0.mp4")
    assert abs(duration - manifest["utterances"][0]["duration"]) < 0.1


def test_same_seed_gives_the_same_corpus(meld_small, tmp_path):
    out, manifest = meld_small
    again = synth_meld(tmp_path / "MELD.Raw", dialogs=1, seed=5, size=(64, 36), workers=2, progress=False)
    for split in FOLDERS:
        name = f"{split}_sent_emo.csv"
        assert (out / name).read_bytes() == (tmp_path / "MELD.Raw" / name).read_bytes()
    assert {**again, "size": None} == {**manifest, "size": None}
    assert (tmp_path / "MELD.Raw" / manifest["utterances"][-1]["clip"]).is_file()


def test_mtcnn_finds_the_face_in_decoded_frames(meld_small):
    # torch before decord: decord2 dlopens every nvidia/*/lib/*.so (libnvblas included) RTLD_GLOBAL, and a
    # torch loaded after that segfaults in its first CPU conv (dmlc/decord#293).
    from facenet_pytorch import MTCNN  # noqa: I001  (imports torch, which must come before decord)
    from PIL import Image

    import decord  # a required dependency: a missing decord must fail, not skip

    out, manifest = meld_small
    mtcnn = MTCNN(keep_all=True, device="cpu")
    picked = {m["cues"]["video"]: m for m in manifest["utterances"]}  # one clip per look shown
    assert len(picked) >= 4
    for m in picked.values():
        vr = decord.VideoReader(str(out / m["clip"]))
        assert (vr[0].shape[1], vr[0].shape[0]) == (320, 180)
        boxes, _ = mtcnn.detect(Image.fromarray(vr[len(vr) // 2].asnumpy()))
        assert boxes is not None, m["clip"]
        heights = np.asarray(boxes, dtype=float)[:, 3] - np.asarray(boxes, dtype=float)[:, 1]
        assert heights.max() >= 55


_EMO = re.compile(
    r"^\[(\d+\.\d{4}) - (\d+\.\d{4})\]\t(\S+)\t(\w+)\t\[(\d\.\d{4}), (\d\.\d{4}), (\d\.\d{4})\]$"
)
_TRN = re.compile(r"^(\S+) \[(\d{3}\.\d{4})-(\d{3}\.\d{4})\]: (.+)$")


def test_iemocap_layout(iemocap):
    out, manifest = iemocap
    truth = {m["utt"]: m for m in manifest["utterances"]}
    dialogs = sorted({(m["split"], m["dialog"]) for m in manifest["utterances"]})
    assert [s for s, _ in dialogs] == [f"Session{s}" for s in range(1, 6)]
    seen = set()
    for session, dialog in dialogs:
        base = out / session / "dialog"
        lines = (base / "EmoEvaluation" / f"{dialog}.txt").read_text().splitlines()
        assert lines[0] == "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]" and lines[1] == ""
        for ln in lines:
            if hit := _EMO.match(ln):
                start, end, turn, label = float(hit[1]), float(hit[2]), hit[3], hit[4]
                assert re.fullmatch(rf"{dialog}_[FM]\d{{3}}", turn)
                assert (start, end, label) == (truth[turn]["start"], truth[turn]["end"], truth[turn]["label"])
                assert 1.0 <= end - start <= 3.0
                seen.add(turn)
        spans = []
        for ln in (base / "transcriptions" / f"{dialog}.txt").read_text().splitlines():
            if hit := _TRN.match(ln):
                assert hit[4] == truth[hit[1]]["text"]
                spans.append((float(hit[2]), float(hit[3])))
            else:
                assert re.fullmatch(r"[FM]: \[[A-Z]+\]", ln)
        assert 4 <= len(spans) <= 8 and all(a[1] < b[0] for a, b in zip(spans, spans[1:], strict=False))
        header = _header(base / "avi" / "DivX" / f"{dialog}.avi")
        assert re.search(r"Video: mpeg4 .*DIVX", header) and "Audio: pcm_s16le" in header
        assert "16000 Hz" in header
    assert seen == set(truth)
    for m in truth.values():
        with wave.open(str(out / m["clip"])) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
            assert abs(w.getnframes() / 16000 - m["duration"]) < 1e-3


def test_cues_are_ambiguous_per_modality_but_fusable():
    cfg = CueConfig()
    rows, _ = plan(300, seed=1, bad_files=False, cfg=cfg)
    utts = [r for rs in rows.values() for r in rs]
    share = {k: np.mean([getattr(r.cues, k) == r.label for r in utts]) for k in ("text", "audio", "video")}
    assert abs(share["text"] - 0.7) < 0.04 and abs(share["audio"] - 0.6) < 0.04
    assert abs(share["video"] - 0.6) < 0.04
    votes = [Counter((r.cues.text, r.cues.audio, r.cues.video)).most_common(1)[0] for r in utts]
    fused = np.mean([lab == r.label and n >= 2 for (lab, n), r in zip(votes, utts, strict=True)])
    assert fused > max(share.values())  # a majority vote alone already beats every single modality
    assert set(Counter(r.label for r in utts)) == set(MELD_LABELS)

    rng = np.random.default_rng(0)
    turns = [t for i in range(300) for t in plan_dialog(rng, f"Ses01F_impro{i:02d}", cfg)]
    other = np.mean([t.label not in IEMOCAP_LABELS for t in turns])
    assert 0.08 < other < 0.16


def test_voices_differ_by_label():
    rng = np.random.default_rng(0)

    def rms(label: str) -> float:
        return float(
            np.mean([np.sqrt(np.mean(voice(C.voice_for(rng, label, True), 2.0, rng) ** 2)) for _ in range(5)])
        )

    assert rms("anger") > 2 * rms("sadness")
    keys = {C.cue_key(label) for label in MELD_LABELS + IEMOCAP_LABELS}
    assert len(keys) == 9 and keys <= set(C.VOICES) & set(C.LOOKS) & set(C.TEXT_CUES)
