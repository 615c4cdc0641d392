"""Training manifests (``m2fdist pack manifest``): labels and splits from the rows, every bad row a skip naming its
line, the label set the data's own or ``--labels``."""

from __future__ import annotations

import json

import pytest

from m2fdist.raw import read_corpus
from m2fdist.raw.iemocap import dev_dialogs
from m2fdist.raw.labelled import parse_labels, read_labelled_manifest

pytestmark = pytest.mark.unit


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


ROWS = [
    {"dialog": "call-7", "utt": 20, "speaker": "client", "text": "My order never came!", "label": "tense",
     "split": "train"},
    {"dialog": "call-7", "utt": 10, "speaker": "agent", "text": "Hello, how can I help?", "label": "calm",
     "split": "train"},
    {"dialog": "call-8", "utt": 0, "text": "Great news today", "label": "joyful", "split": "DEV"},
    {"dialog": "call-8", "utt": 0, "text": "the same position again", "label": "joyful", "split": "dev"},  # line 4
    {"dialog": "call-8", "utt": 1, "text": "another split", "label": "calm", "split": "test"},  # line 5
    {"dialog": "call-8", "utt": 2, "text": "  ", "label": "calm", "split": "dev"},  # line 6: no text
    {"dialog": "call-8", "utt": 3, "text": "no label", "split": "dev"},  # line 7
    {"dialog": "call-8", "utt": 4, "text": "a label outside", "label": "furious", "split": "dev"},  # line 8
    {"dialog": "call-9", "utt": 0, "text": "which split", "label": "calm", "split": "holdout"},  # line 9
    {"dialog": "call-9", "utt": 1, "text": "none given", "label": "calm"},  # line 10
    {"dialog": "call-10", "utt": 0, "text": "ok", "label": 3, "split": "test"},  # a number is a label name too
]


def test_labels_splits_and_skips_of_a_jsonl_manifest(tmp_path):
    corpus = read_labelled_manifest(_jsonl(tmp_path / "calls.jsonl", ROWS), media=False)
    assert corpus.dataset == "manifest" and list(corpus.splits) == ["train", "dev", "test"]
    # the label set is the kept rows' labels, sorted: the same rows give the same ids anywhere
    assert corpus.labels == ("3", "calm", "furious", "joyful", "tense")
    (train,), (dev,), (test,) = corpus.splits.values()
    assert [(u.utt, u.text, u.label, u.label_id) for u in train] == [
        ("10", "Hello, how can I help?", "calm", 1), ("20", "My order never came!", "tense", 4)]
    assert train[1].extra["context_prev"] == [{"speaker": "agent", "text": "Hello, how can I help?"}]
    assert [u.key for u in train] == ["manifest_train_d00000_u000", "manifest_train_d00000_u001"]
    assert [(u.dialog, u.split, u.label) for u in dev] == [("call-8", "dev", "joyful"), ("call-8", "dev", "furious")]
    assert [(u.dialog, u.label) for u in test] == [("call-10", "3")]
    assert {s.source: s.reason for s in corpus.skipped} == {
        "calls.jsonl:4": "duplicate utterance (dialog 'call-8' already has an utterance 0, at line 3)",
        "calls.jsonl:5": "dialog in two splits (this row says 'test'; dialog 'call-8' is in 'dev', as line 3 says)",
        "calls.jsonl:6": "no text",
        "calls.jsonl:7": "no label",
        "calls.jsonl:9": "split 'holdout' is not train, dev or test",
        "calls.jsonl:10": "no split: give train, dev or test (or pack with --dev-fraction, which makes rows without "
                          "one train and holds out a seeded fraction of the train dialogs as dev)"}
    assert {s.source: (s.dialog, s.utt, s.split) for s in corpus.skipped}["calls.jsonl:5"] == ("call-8", "1", "test")


def test_labels_given_fix_the_ids_and_refuse_others(tmp_path):
    corpus = read_labelled_manifest(_jsonl(tmp_path / "calls.jsonl", ROWS), media=False,
                                    labels=parse_labels("joyful, tense,calm"))
    assert corpus.labels == ("joyful", "tense", "calm")
    assert [(u.label, u.label_id) for d in corpus.splits["train"] for u in d] == [("calm", 2), ("tense", 1)]
    reasons = {s.source: s.reason for s in corpus.skipped}
    assert reasons["calls.jsonl:8"] == "label 'furious' is not one of --labels joyful,tense,calm"
    assert reasons["calls.jsonl:11"] == "label '3' is not one of --labels joyful,tense,calm"
    with pytest.raises(ValueError, match="--labels: labels name 'a' more than once"):
        parse_labels("a,b,a")
    with pytest.raises(ValueError, match="--labels: labels must be a non-empty list"):
        parse_labels("a,,b")


def test_a_csv_manifest_with_clips_and_a_seeded_dev_fraction(tmp_path):
    (tmp_path / "rec").mkdir()
    for name in ("rec/long.mp4", "rec/a.wav", "rec/u.mp4"):
        (tmp_path / name).write_bytes(b"x")  # the reader only checks that files exist; packing decodes them
    lines = ["Dialog,Utt,Text,Label,Video,Audio,Start,End"]
    lines += [f"s{d},{u},turn {u} of {d},{'up' if u % 2 else 'down'},rec/long.mp4,rec/a.wav,{2 * u},{2 * u + 1.5}"
              for d in range(10) for u in range(2)]
    lines += ["s10,0,no clip,up,rec/gone.mp4,,,",  # a missing file, named
              "s10,1,half a span,up,rec/u.mp4,,3,",
              "s10,2,whole clip,up,rec/u.mp4,,,"]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    corpus = read_corpus("manifest", tmp_path / "m.csv", dev_fraction=0.3, dev_seed=4)
    held = dev_dialogs([f"s{d}" for d in range(11)], 0.3, 4)  # IEMOCAP's own seeded draw, over the train dialogs
    assert {d[0].dialog for d in corpus.splits["dev"]} == held and len(held) == 3
    assert {d[0].dialog for d in corpus.splits["train"]} == {f"s{d}" for d in range(11)} - held
    u = next(d for d in corpus.splits["train"] + corpus.splits["dev"] if d[0].dialog == "s3")[1]
    assert (u.video, u.audio, u.cut_start, u.cut_end) == (str(tmp_path / "rec/long.mp4"), str(tmp_path / "rec/a.wav"),
                                                         2.0, 3.5)
    assert corpus.labels == ("down", "up")
    assert {s.source: s.reason for s in corpus.skipped} == {
        "m.csv:22": f"video file missing: {tmp_path / 'rec' / 'gone.mp4'}",
        "m.csv:23": "give both start and end, or neither"}
    other = read_corpus("manifest", tmp_path / "m.csv", dev_fraction=0.3, dev_seed=5)
    assert {d[0].dialog for d in other.splits["dev"]} != held  # the seed decides
    # text only: media columns are not read, so the missing clip is no reason to leave the row out
    assert not read_corpus("manifest", tmp_path / "m.csv", dev_fraction=0.3, media=False).skipped


def test_manifest_errors(tmp_path):
    (tmp_path / "m.csv").write_text("dialog,utt,text,split\na,0,hi,train\n")
    with pytest.raises(ValueError, match=r"missing columns \['label'\]; a manifest has .*, and for training label"):
        read_labelled_manifest(tmp_path / "m.csv")
    _jsonl(tmp_path / "bad.jsonl", [{"dialog": "a", "utt": 0, "text": "hi", "split": "train"}, "{oops"])
    with pytest.raises(ValueError, match=r"bad.jsonl: no row can be used \(bad.jsonl:1: no label; bad.jsonl:2: not "
                                         r"JSON"):
        read_labelled_manifest(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="--dev-fraction must be between 0 and 1"):
        read_labelled_manifest(tmp_path / "bad.jsonl", dev_fraction=1.0)
