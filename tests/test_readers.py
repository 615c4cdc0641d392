"""Raw readers on synthetic trees with MELD's known bad files planted."""

from __future__ import annotations

from collections import Counter

import pytest

from m2fdist.raw import read_iemocap, read_meld
from m2fdist.raw.iemocap import dev_dialogs
from m2fdist.raw.meld import decode_csv_bytes, parse_time


def test_cp1252_decoding_keeps_every_character():
    assert decode_csv_bytes(b"he\x92s here\x85 caf\xe9") == "he’s here… café"
    # utf-8 files (people re-save CSVs) stay utf-8; a BOM is dropped
    assert decode_csv_bytes("\ufeffhe’s".encode()) == "he’s"
    # cp1252's five undefined bytes are not lost: they come back as their Latin-1 code points
    assert decode_csv_bytes(b"a\x81b\x9dc\x92") == "a\x81b\x9dc’"


def test_parse_time():
    assert parse_time("00:16:16,059") == pytest.approx(976.059)
    with pytest.raises(ValueError, match="hh:mm:ss"):
        parse_time("16:16")


def test_meld_reader_pairs_rows_and_clips(meld_raw):
    root, manifest = meld_raw
    corpus = read_meld(root)
    planted = {(p["split"], str(p["dialog"]), str(p["utt"])): p["kind"] for p in manifest["planted"]}
    got = {(u.split, u.dialog, u.utt): u for s in corpus.splits for u in corpus.utterances(s)}
    expected = {
        (m["split"], str(m["dialog"]), str(m["utt"])): m
        for m in manifest["utterances"]
        if planted.get((m["split"], str(m["dialog"]), str(m["utt"]))) not in ("missing", "bad_label", "no_row")
    }
    assert got.keys() == expected.keys()
    for k, u in got.items():
        assert u.text == expected[k]["text"]  # cp1252 text comes out as written
        assert u.label == expected[k]["label"]
        assert "." not in u.key
    texts = " ".join(u.text for u in got.values())
    assert "’" in texts and "…" in texts
    # utterances of a dialog come in order, dialogs in order
    for dialogs in corpus.splits.values():
        ids = [int(d[0].dialog) for d in dialogs]
        assert ids == sorted(ids)
        for d in dialogs:
            assert [int(u.utt) for u in d] == sorted(int(u.utt) for u in d)
            assert {u.dialog for u in d} == {d[0].dialog}
    # context holds the neighbours' text
    dialog = corpus.splits["train"][0]
    assert dialog[1].extra["context_prev"][-1]["text"] == dialog[0].text
    assert dialog[0].extra["context_next"][0]["text"] == dialog[1].text


def test_meld_reader_records_bad_files(meld_raw):
    root, manifest = meld_raw
    corpus = read_meld(root)
    reasons = Counter()
    for s in corpus.skipped:
        reasons[s.reason.split(" (")[0]] += 1
        assert s.source and s.split
    kinds = Counter(p["kind"] for p in manifest["planted"])
    assert reasons["clip missing"] == kinds["missing"]
    assert reasons["clip has no CSV row"] == kinds["no_row"]
    assert reasons["final_videos_test twin of a test clip"] == kinds["twin"]
    assert sum(v for k, v in reasons.items() if "not one of the seven" in k) == kinds["bad_label"]
    missing = [s for s in corpus.skipped if s.reason == "clip missing"]
    assert {(s.split, s.dialog, s.utt) for s in missing} == {("dev", "110", "7")}


def test_meld_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no MELD CSV"):
        read_meld(tmp_path)
    (tmp_path / "train_sent_emo.csv").write_text("Sr No.,Utterance\n1,hi\n")
    with pytest.raises(FileNotFoundError, match="train_splits"):
        read_meld(tmp_path)
    (tmp_path / "train_splits").mkdir()
    with pytest.raises(ValueError, match="missing columns"):
        read_meld(tmp_path)


def test_iemocap_reader(iemocap_raw):
    root, manifest = iemocap_raw
    corpus = read_iemocap(root)
    truth = {m["utt"]: m for m in manifest["utterances"]}
    got = {u.utt: u for s in corpus.splits for u in corpus.utterances(s)}
    six = {"neu", "hap", "sad", "ang", "exc", "fru"}
    assert got.keys() == {t for t, m in truth.items() if m["label"] in six}
    for turn, u in got.items():
        assert u.text == truth[turn]["text"] and u.label == truth[turn]["label"]
        assert u.speaker == turn[:5] + turn.rsplit("_", 1)[1][0]
        assert (u.split == "test") == turn.startswith("Ses05")
        assert u.cut_end > u.cut_start
    others = [s for s in corpus.skipped if "not one of the six" in s.reason]
    assert len(others) == sum(m["label"] not in six for m in truth.values()) > 0
    assert all(s.split in ("train", "dev", "test") for s in corpus.skipped)
    # dev is a seeded 10% of sessions 1-4's dialogs, identical on every call
    dev = {d[0].dialog for d in corpus.splits.get("dev", [])}
    train = {d[0].dialog for d in corpus.splits["train"]}
    assert dev and not dev & train
    assert len(dev) == round(0.1 * len(dev | train))
    assert dev == {d[0].dialog for d in read_iemocap(root).splits["dev"]}


def test_dev_split_is_seeded():
    names = [f"Ses0{s}F_impro{i:02d}" for s in range(1, 5) for i in range(30)]
    a, b = dev_dialogs(names, 0.1, 0), dev_dialogs(list(reversed(names)), 0.1, 0)
    assert a == b and len(a) == 12
    assert dev_dialogs(names, 0.1, 1) != a
