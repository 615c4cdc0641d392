"""Raw readers on synthetic trees with MELD's known bad files planted."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import csv_only_copy

from m2fdist.raw import read_iemocap, read_meld
from m2fdist.raw.iemocap import dev_dialogs
from m2fdist.raw.meld import decode_csv_bytes, parse_time

pytestmark = pytest.mark.unit


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




def test_meld_text_only_reads_every_row_without_clips(meld_raw, tmp_path):
    root, manifest = meld_raw
    with_media = read_meld(root)
    text = read_meld(csv_only_copy(root, tmp_path / "csv"), media=False)
    keys = {u.key for s in text.splits for u in text.utterances(s)}
    media_keys = {u.key for s in with_media.splits for u in with_media.utterances(s)}
    # every row with a MELD label is a sample, the one whose clip is missing (dev dia110_utt7) included
    missing = [s for s in with_media.skipped if s.reason == "clip missing"]
    assert keys == media_keys | {f"meld_{s.split}_d{int(s.dialog):04d}_u{int(s.utt):02d}" for s in missing}
    assert "meld_dev_d0110_u07" in keys
    rows = [m for m in manifest["utterances"] if (m["split"], m["dialog"], m["utt"]) in
            {(p["split"], p["dialog"], p["utt"]) for p in manifest["planted"] if p["kind"] == "no_row"}]
    assert len(keys) == len(manifest["utterances"]) - len(rows) - sum(
        p["kind"] == "bad_label" for p in manifest["planted"])
    assert all("clip" not in s.reason for s in text.skipped)
    u = text.utterances("train")[0]
    assert u.meta()["source"] == "train_sent_emo.csv:2" and u.video == "" and u.audio is None


def test_meld_malformed_rows_are_skips_and_empty_csvs_say_so(tmp_path):
    header = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
    good = '1,"Oh, hi’",Ross,joy,positive,0,0,1,1,"00:00:01,000","00:00:02,000"\n'
    short = "2,hello,Ross,joy,positive,0,1\n"  # too few fields: no times
    long_ = '3,"a",Ross,joy,positive,0,2,1,1,"00:00:01,000","00:00:02,000",extra\n'
    late = '4,"multi\nline",Rachel,anger,negative,0,3,1,1,"00:00:03,000","00:00:04,000"\n'
    (tmp_path / "train_sent_emo.csv").write_bytes((header + good + short + long_ + late).encode("cp1252"))
    for media in (False, True):
        if media:
            (tmp_path / "train_splits").mkdir()
            for u in (0, 3):
                (tmp_path / "train_splits" / f"dia0_utt{u}.mp4").write_bytes(b"")
        corpus = read_meld(tmp_path, splits=("train",), media=media)
        assert [(u.utt, u.text) for u in corpus.utterances("train")] == [("0", "Oh, hi’"), ("3", "multi\nline")]
        reasons = sorted(s.reason for s in corpus.skipped)
        assert reasons == ["malformed CSV row: row has 12 fields, the header 11 (train_sent_emo.csv:4)",
                           "malformed CSV row: row has 7 fields, the header 11 (train_sent_emo.csv:3)"]
    (tmp_path / "train_sent_emo.csv").write_bytes(b"")
    with pytest.raises(ValueError, match="train_sent_emo.csv: the file is empty"):
        read_meld(tmp_path, splits=("train",))
    (tmp_path / "train_sent_emo.csv").write_text(header)
    with pytest.raises(ValueError, match="header is there but no data rows"):
        read_meld(tmp_path, splits=("train",))


def test_iemocap_text_only_needs_no_media(iemocap_raw, tmp_path):
    root, _ = iemocap_raw
    bare = tmp_path / "IEMOCAP_full_release"
    for f in root.glob("Session*/dialog/*/*.txt"):  # EmoEvaluation and transcriptions only
        (bare / f.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
        (bare / f.relative_to(root)).write_bytes(f.read_bytes())
    full, text = read_iemocap(root), read_iemocap(bare, media=False)
    assert {u.key for s in text.splits for u in text.utterances(s)} == {
        u.key for s in full.splits for u in full.utterances(s)}
    u = text.utterances("train")[0]
    assert u.audio is None and u.meta()["source"].endswith(f"transcriptions/{u.dialog}.txt")
    assert {s.reason for s in read_iemocap(bare).skipped} >= {"dialog video missing"}  # with media: all skipped


def test_iemocap_root_is_found_one_or_two_levels_down(iemocap_raw, tmp_path, capsys):
    """Archives unpack with varying nesting: --root may be the folder above IEMOCAP_full_release, or two above."""
    root, _ = iemocap_raw
    whole = read_iemocap(root)
    want = {u.key for s in whole.splits for u in whole.utterances(s)}
    one, two = tmp_path / "one", tmp_path / "two" / "IEMOCAP"
    for parent in (one, two):
        parent.mkdir(parents=True)
        (parent / "IEMOCAP_full_release").symlink_to(root, target_is_directory=True)
        (parent / "notes").mkdir()  # a sibling without sessions is passed over
    capsys.readouterr()
    for given in (one, tmp_path / "two"):
        corpus = read_iemocap(given)
        assert {u.key for s in corpus.splits for u in corpus.utterances(s)} == want
        assert capsys.readouterr().err.strip().endswith("IEMOCAP_full_release")  # says which folder it used
    # three levels down is too deep, and the error names what it looked for
    deep = tmp_path / "deep" / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "IEMOCAP_full_release").symlink_to(root, target_is_directory=True)
    with pytest.raises(FileNotFoundError, match=r"no Session1..Session5 folders in .*deep or up to two levels "
                                                r"below it \(looked for IEMOCAP_full_release/Session1"):
        read_iemocap(tmp_path / "deep")


def test_pack_iemocap_finds_the_release_below_root(iemocap_raw, tmp_path, capsys):
    from m2fdist.cli import main as cli

    root, _ = iemocap_raw
    (tmp_path / "dl" / "IEMOCAP").mkdir(parents=True)
    (tmp_path / "dl" / "IEMOCAP" / "IEMOCAP_full_release").symlink_to(root, target_is_directory=True)
    out = tmp_path / "shards"
    assert cli(["pack", "iemocap", "--root", str(tmp_path / "dl"), "--out", str(out), "--modalities", "text",
                "--no-progress"]) == 0
    assert f"IEMOCAP: reading {tmp_path / 'dl' / 'IEMOCAP' / 'IEMOCAP_full_release'}" in capsys.readouterr().err
    assert (out / "index.json").is_file()


def test_meld_reader_says_which_folders_it_used(meld_raw, tmp_path, capsys):
    root, _ = meld_raw
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "MELD.Raw").symlink_to(root, target_is_directory=True)
    read_meld(tmp_path, splits=("dev",))
    said = capsys.readouterr().err
    assert f"MELD dev: reading {tmp_path / 'x' / 'MELD.Raw' / 'dev_sent_emo.csv'}" in said
    assert f"clips in {tmp_path / 'x' / 'MELD.Raw' / 'dev_splits_complete'}" in said


def test_meld_field_past_the_csv_limit_is_a_skip(tmp_path):
    """The MELD reader shares the manifest's CSV rows: a 140,000-character utterance is one skipped row."""
    header = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
    row = '{n},"{text}",Ross,joy,positive,0,{n},1,1,"00:00:01,000","00:00:02,000"\n'
    rows = [row.format(n=0, text="hi"), row.format(n=1, text="y" * 140_000), row.format(n=2, text="there")]
    (tmp_path / "train_sent_emo.csv").write_text(header + "".join(rows))
    corpus = read_meld(tmp_path, splits=("train",), media=False)
    assert [u.text for u in corpus.utterances("train")] == ["hi", "there"]
    assert [s.reason for s in corpus.skipped] == ["malformed CSV row: field Utterance is 140,000 characters, past "
                                                  "the 131,072 a field may hold (train_sent_emo.csv:3)"]
