"""Manifests (CSV / JSONL of dialogs in any folder layout): what is read, what is a recorded skip, what is an error."""

from __future__ import annotations

import json

import pytest

from m2fdist.format.exports import labels_of
from m2fdist.raw.manifest import read_manifest

pytestmark = pytest.mark.unit


def _media(tmp_path):
    (tmp_path / "deep" / "er").mkdir(parents=True)
    for name in ("deep/er/a.mp4", "deep/v.mp4", "deep/v.wav"):
        (tmp_path / name).write_bytes(b"x")  # the reader only checks that files exist; decoding comes later
    return tmp_path


def test_csv_manifest_rows_and_skips(tmp_path):
    root = _media(tmp_path)
    absolute = root / "deep" / "v.mp4"
    (root / "m.csv").write_text(
        "Dialog,Utt,Speaker,Text,Video,Audio\n"
        "x,1,B,second,deep/er/a.mp4,\n"  # out of order: the dialog is ordered by utt
        f"x,0,A,first,{absolute},deep/v.wav\n"
        "y,0,A,,deep/er/a.mp4,\n"  # no text
        "y,one,A,hi,deep/er/a.mp4,\n"  # utt not an integer
        "x,1,A,again,deep/er/a.mp4,\n"  # duplicate position
        "y,2,A,hi,deep/gone.mp4,\n"  # missing clip
        "y,3,A,hi,,deep/v.wav\n"  # a wav alone: this model reads video too
        "y,4,A,hi,deep/v.mp4,\n", encoding="cp1252")
    corpus = read_manifest(root / "m.csv", needs="AV")
    (x, y), = [corpus.splits[""]]
    assert [(u.dialog, u.utt, u.text) for u in x] == [("x", "0", "first"), ("x", "1", "second")]
    assert x[0].video == str(absolute) and x[0].audio == str(root / "deep" / "v.wav") and x[1].audio is None
    assert x[1].extra["context_prev"] == [{"speaker": "A", "text": "first"}]  # neighbours for the text model
    assert [(u.dialog, u.utt) for u in y] == [("y", "4")]
    reasons = {s.source: s.reason for s in corpus.skipped}
    assert reasons == {"m.csv:4": "no text",
                       "m.csv:5": "utt 'one' is not an integer (the utterance's position in its dialog)",
                       "m.csv:6": "duplicate utterance (dialog 'x' already has an utterance 1, at line 2)",
                       "m.csv:7": f"video file missing: {root / 'deep' / 'gone.mp4'}",
                       "m.csv:8": "no media: this model reads audio and video; give an mp4 (video), or a video "
                                  "and a wav (audio)"}
    # a text-only model reads no media: the same rows need no files
    text_only = read_manifest(root / "m.csv", needs="")
    assert sum(map(len, text_only.splits[""])) == 5 and x[0].video and not text_only.splits[""][0][0].video


def test_jsonl_manifest_spans_and_bad_lines(tmp_path):
    root = _media(tmp_path)
    rows = [{"dialog": 7, "utt": 0, "speaker": "S", "text": "a", "video": "deep/v.mp4", "start": 1.5, "end": 3},
            {"dialog": 7, "utt": 1, "text": "b", "video": "deep/v.mp4", "start": 3},
            {"dialog": 7, "utt": 2, "text": "c", "video": "deep/v.mp4", "start": 4, "end": 4}]
    lines = [json.dumps(r) for r in rows] + ["{not json", "[1, 2]", ""]
    (root / "m.jsonl").write_text("\n".join(lines) + "\n")
    corpus = read_manifest(root / "m.jsonl")
    (d,), = [corpus.splits[""]]
    assert (d[0].dialog, d[0].speaker, d[0].cut_start, d[0].cut_end) == ("7", "S", 1.5, 3.0)
    assert {s.source: s.reason for s in corpus.skipped} == {
        "m.jsonl:2": "give both start and end, or neither", "m.jsonl:3": "empty time span [4.0 - 4.0]",
        "m.jsonl:4": "not JSON: Expecting property name enclosed in double quotes", "m.jsonl:5": "not a JSON object"}


def test_manifest_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest .*nope.csv not found"):
        read_manifest(tmp_path / "nope.csv")
    (tmp_path / "m.tsv").write_text("x")
    with pytest.raises(ValueError, match="a manifest is a .csv or .jsonl file"):
        read_manifest(tmp_path / "m.tsv")
    (tmp_path / "m.csv").write_text("dialog,text\n1,hi\n")
    with pytest.raises(ValueError, match=r"missing columns \['utt'\]"):
        read_manifest(tmp_path / "m.csv")


def test_labels_come_from_the_export():
    """An IEMOCAP model names IEMOCAP's six classes; exports from before labels were saved fall back to the dataset."""
    assert labels_of({"labels": ["neu", "hap", "sad", "ang", "exc", "fru"], "run": {"dataset": "iemocap"}}) == [
        "neu", "hap", "sad", "ang", "exc", "fru"]
    assert labels_of({"run": {"dataset": "iemocap"}}) == ["neu", "hap", "sad", "ang", "exc", "fru"]
    assert labels_of({"run": {"dataset": "meld"}})[:2] == ["neutral", "joy"]
    with pytest.raises(ValueError, match="non-empty list of names"):
        labels_of({"labels": [], "run": {"dataset": "meld"}})


def test_a_field_past_the_csv_limit_is_a_skip_naming_its_line(tmp_path):
    """csv.Error ("field larger than field limit (131072)") was a traceback that lost the whole manifest; stopped
    inside a quoted field, the reader would also have misnumbered, or read as rows, the lines after it."""
    huge = "y" * 140_000
    (tmp_path / "m.csv").write_text(f"dialog,utt,text\na,0,hi\na,1,{huge}\na,2,\"{huge}\nstill the same field\"\n"
                                    "a,3,ok\nb,0,\"a quoted\nline\"\n")
    import csv

    limit = csv.field_size_limit()
    corpus = read_manifest(tmp_path / "m.csv", needs="")
    assert csv.field_size_limit() == limit  # the process's limit is left as it was
    assert [(u.dialog, u.utt) for d in corpus.splits[""] for u in d] == [("a", "0"), ("a", "3"), ("b", "0")]
    assert {s.source: s.reason for s in corpus.skipped} == {
        "m.csv:3": "field text is 140,000 characters, past the 131,072 a field may hold",
        "m.csv:4": "field text is 140,021 characters, past the 131,072 a field may hold"}
    assert corpus.splits[""][1][0].extra["source"] == "m.csv:7"  # lines after it keep their own numbers


def test_a_deeply_nested_or_oversized_jsonl_line_is_a_skip(tmp_path):
    """A line of 100,000 '[' raised RecursionError out of json.loads: the whole run lost, no row named."""
    lines = [json.dumps({"dialog": "a", "utt": 0, "text": "hi"}), "[" * 100_000 + "]" * 100_000,
             '{"dialog": "a", "utt": 1, "text": "x", "speaker": ' + "[" * 5000 + "]" * 5000 + "}",
             json.dumps({"dialog": "a", "utt": 2, "text": "y" * 140_000}), json.dumps({"dialog": "a", "utt": 3,
                                                                                   "text": "ok"})]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    corpus = read_manifest(tmp_path / "m.jsonl", needs="")
    assert [u.utt for d in corpus.splits[""] for u in d] == ["0", "3"]
    assert {s.source: s.reason for s in corpus.skipped} == {
        "m.jsonl:2": "not JSON: nested too deeply", "m.jsonl:3": "not JSON: nested too deeply",
        "m.jsonl:4": "field text is 140,000 characters, past the 131,072 a field may hold"}



def test_jsonl_lines_end_at_newline_only(tmp_path):
    """A text holding U+2028, U+2029 or \\x85 (JSON allows them unescaped in a string) is one row, not a row cut
    in two and two "not JSON" skips; CRLF line ends still work, and line numbers stay the file's."""
    texts = ["one\u2028two", "para\u2029graph", "next\x85line", "form\x0cfeed"]
    rows = [json.dumps({"dialog": "d", "utt": i, "text": t}, ensure_ascii=False) for i, t in enumerate(texts)]
    (tmp_path / "m.jsonl").write_bytes(("\r\n".join([*rows, "{broken"]) + "\r\n").encode("utf-8"))
    corpus = read_manifest(tmp_path / "m.jsonl", needs="")
    assert [u.text for d in corpus.splits[""] for u in d] == texts
    assert [u.extra["source"] for d in corpus.splits[""] for u in d] == [f"m.jsonl:{n}" for n in (1, 2, 3, 4)]
    assert {s.source: s.reason for s in corpus.skipped} == {"m.jsonl:5": "not JSON: Expecting property name "
                                                                         "enclosed in double quotes"}
