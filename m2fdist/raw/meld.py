"""Reader for the MELD.Raw tree.

MELD's CSVs are cp1252, not UTF-8 (0x92 is ’, 0x85 is …), and its clip folders hold files that do not
match the CSVs: twins named ``final_videos_test*``, clips without a row, rows without a clip. The
reader pairs rows with clips and records every mismatch; corrupt and wrongly cut clips are found
later, when the packer decodes them. Without media (``media=False``, ``m2fdist pack --modalities text``) only
the CSVs are read: no clip folder is needed or looked at, and every well-formed row becomes an utterance.
"""

from __future__ import annotations

import csv
import io
import re
import sys
from pathlib import Path

from m2fdist.common.labels import MELD_LABELS, label_id
from m2fdist.raw.base import Corpus, Skip, Utterance, add_context, make_key

CSV_NAMES = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
CLIP_DIRS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
COLUMNS = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID", "StartTime", "EndTime")
_CLIP = re.compile(r"^dia(\d+)_utt(\d+)\.mp4$")
_TIME = re.compile(r"^(\d+):(\d+):(\d+)[,.](\d+)$")


def decode_csv_bytes(data: bytes) -> str:
    """UTF-8 when the file is valid UTF-8, else cp1252 (MELD's real encoding).

    cp1252 leaves five bytes undefined; those fall back to Latin-1 so no byte is ever lost.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        out = data.decode("cp1252", errors="surrogateescape")
    # Undefined cp1252 bytes came back as lone surrogates: map them to the Latin-1 code point instead.
    return "".join(chr(ord(c) - 0xDC00) if 0xDC80 <= ord(c) <= 0xDCFF else c for c in out)


# Characters one CSV field may hold (the csv module's own default limit): a row with a longer field is a
# recorded skip naming its line, not csv.Error's traceback, and the rows after it are read as usual.
MAX_FIELD = 131_072


def csv_rows(text: str) -> tuple[list[str], list[tuple[int, dict[str, str | None] | str]]]:
    """The header and (line, row) for each data row of a CSV's text; a row that cannot be used is (line, why).

    Line numbers are the file's own (a quoted field may span lines), so a skip points at the right place. The
    csv module's field limit is raised past the text's length while reading (the whole text is in memory
    already): it would stop the reader in the middle of a quoted field and misnumber, or misread as rows, what
    follows; the limit is then applied here, to each row.
    """
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(text) + 1))
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = list(reader.fieldnames or [])
        rows: list[tuple[int, dict[str, str | None] | str]] = []
        while True:
            line = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:  # the file ended inside a quoted field, ...
                rows.append((line, f"not a CSV row ({e})"))
                continue
            values = [(k, v) for k, v in row.items() if isinstance(v, str)]
            values += [(None, v) for v in (row.get(None) or []) if isinstance(v, str)]  # type: ignore[call-overload]
            long = next(((k, len(v)) for k, v in values if len(v) > MAX_FIELD), None)
            rows.append((line, f"field {long[0] or '(past the header)'} is {long[1]:,} characters, past the "
                               f"{MAX_FIELD:,} a field may hold" if long else row))
    finally:
        csv.field_size_limit(limit)
    return header, rows


def parse_time(value: str) -> float:
    """``hh:mm:ss,mmm`` to seconds."""
    m = _TIME.match(value.strip())
    if not m:
        raise ValueError(f"time {value!r} is not hh:mm:ss,mmm")
    h, mnt, s, ms = m.groups()
    return int(h) * 3600 + int(mnt) * 60 + int(s) + int(ms) / 10 ** len(ms)


def _find(root: Path, name: str, want_dir: bool) -> Path | None:
    """First match of ``name`` at most three levels under root: archives unpack with varying nesting."""
    for depth in range(4):
        pattern = "/".join(["*"] * depth + [name]) if depth else name
        hits = sorted(p for p in root.glob(pattern) if p.is_dir() == want_dir)
        if hits:
            return hits[0]
    return None


def read_meld(root: Path, context: int = 8, splits: tuple[str, ...] = ("train", "dev", "test"),
              require_labels: bool = True, media: bool = True) -> Corpus:
    """Pair every CSV row of each split with its clip; record what cannot be paired.

    ``require_labels=False`` reads trees for prediction: the Emotion column may be missing or empty, and
    such rows are kept with label "" and label_id -1. ``media=False`` reads the CSVs alone (text-only
    packing): clips are neither needed nor probed, and a row's source is its CSV line.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MELD root {root} is not a directory")
    result: dict[str, list[list[Utterance]]] = {}
    skipped: list[Skip] = []
    for split in splits:
        csv_path = _find(root, CSV_NAMES[split], want_dir=False)
        if csv_path is None:
            continue
        clip_dir = _find(root, CLIP_DIRS[split], want_dir=True) if media else None
        if media and clip_dir is None:
            raise FileNotFoundError(
                f"found {csv_path} but no {CLIP_DIRS[split]}/ folder under {root}: unpack the {split} clips"
            )
        print(f"MELD {split}: reading {csv_path}" + (f" and the clips in {clip_dir}" if clip_dir else ""),
              file=sys.stderr)
        dialogs, split_skips = _read_split(split, csv_path, clip_dir, require_labels)
        add_context(dialogs, context)
        result[split] = dialogs
        skipped += split_skips
    if not result:
        raise FileNotFoundError(f"no MELD CSV ({', '.join(CSV_NAMES.values())}) under {root}")
    return Corpus("meld", result, skipped, MELD_LABELS)


def read_rows(csv_path: Path, require_labels: bool = True) -> tuple[int, list[tuple[int, dict[str, str | None] | str]]]:
    """The header's width and (line number, row or why it is not one) for each data row (:func:`csv_rows`); an
    empty file is an error."""
    header, rows = csv_rows(decode_csv_bytes(csv_path.read_bytes()))
    if not header:
        raise ValueError(f"{csv_path}: the file is empty (no header row); is this a MELD CSV?")
    needed = COLUMNS if require_labels else tuple(c for c in COLUMNS if c != "Emotion")
    if missing := [c for c in needed if c not in header]:
        raise ValueError(f"{csv_path}: missing columns {missing}; is this a MELD CSV?")
    if not rows:
        raise ValueError(f"{csv_path}: the header is there but no data rows follow")
    return len(header), rows


def _row_problem(row: dict[str, str | None] | str, columns: int) -> str | None:
    """Why a row cannot be read field by field: csv fills missing fields with None, extras go under None."""
    if isinstance(row, str):  # csv_rows already said why
        return row
    if None in row:
        return f"row has {columns + len(row[None])} fields, the header {columns}"
    if (given := sum(v is not None for v in row.values())) < columns:
        return f"row has {given} fields, the header {columns}"
    return None


def _read_split(split: str, csv_path: Path, clip_dir: Path | None,
                require_labels: bool = True) -> tuple[list[list[Utterance]], list[Skip]]:
    """The utterances of one split's CSV; ``clip_dir`` None reads the text alone (no clips paired)."""
    columns, rows = read_rows(csv_path, require_labels)
    skips: list[Skip] = []
    by_dialog: dict[int, dict[int, Utterance]] = {}
    claimed: set[str] = set()
    for line, row in rows:
        where = f"{csv_path.name}:{line}"
        if problem := _row_problem(row, columns):
            skips.append(Skip("meld", split, f"malformed CSV row: {problem} ({where})", source=str(csv_path)))
            continue
        try:
            d, u = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
        except (TypeError, ValueError):
            skips.append(Skip("meld", split, f"bad Dialogue_ID/Utterance_ID in row {where}", source=str(csv_path)))
            continue
        name = f"dia{d}_utt{u}.mp4"
        clip = clip_dir / name if clip_dir is not None else None
        skip = Skip("meld", split, "", dialog=str(d), utt=str(u), source=str(clip or where))
        emotion = (row.get("Emotion") or "").strip().lower()
        lid = label_id("meld", emotion)
        if lid is None and not require_labels:
            emotion, lid = "", -1
        if lid is None:
            skip.reason = f"label {emotion!r} is not one of the seven MELD emotions ({where})"
        elif d in by_dialog and u in by_dialog[d]:
            skip.reason = f"duplicate CSV row for dia{d}_utt{u} ({where})"
        elif clip is not None and not clip.is_file():
            skip.reason = "clip missing"
        else:
            try:
                start, end = parse_time(row["StartTime"]), parse_time(row["EndTime"])
            except ValueError as e:
                if clip is None:  # text only: times are metadata nobody reads, not a reason to drop the row
                    start = end = 0.0
                else:
                    skip.reason = f"{e} ({where})"
        claimed.add(name)
        if skip.reason:
            skips.append(skip)
            continue
        extra = {k: row.get(c) for k, c in (("sentiment", "Sentiment"), ("season", "Season"), ("episode", "Episode"))}
        if clip is None:  # text only: the sample's source is its CSV line
            extra["source"] = where
        by_dialog.setdefault(d, {})[u] = Utterance(
            dataset="meld", split=split, dialog=str(d), utt=str(u), speaker=row["Speaker"] or "",
            text=row["Utterance"] or "", label=emotion, label_id=lid, start=start, end=end,
            video=str(clip or ""), key=make_key("meld", split, f"d{d:04d}", f"u{u:02d}"),
            extra={k: v for k, v in extra.items() if v is not None},
        )
    dialogs = [[by_dialog[d][u] for u in sorted(by_dialog[d])] for d in sorted(by_dialog)]
    if clip_dir is not None:
        skips += _unpaired_clips(split, clip_dir, claimed)
    return dialogs, skips


def _unpaired_clips(split: str, clip_dir: Path, claimed: set[str]) -> list[Skip]:
    """Files of the clip folder that no CSV row claimed, each with why."""
    skips = []
    for path in sorted(clip_dir.iterdir()):
        if path.name in claimed or path.is_dir():
            continue
        m = _CLIP.match(path.name)
        if path.name.startswith("final_videos_test"):
            reason = "final_videos_test twin of a test clip"
        elif m:
            reason = "clip has no CSV row"
        else:
            reason = "not a MELD clip name"
        skips.append(Skip("meld", split, reason, dialog=m.group(1) if m else None,
                          utt=m.group(2) if m else None, source=str(path)))
    return skips
