"""Dialogs in any folder layout: a CSV or JSONL manifest, or plain Python structures (``M2FNet.predict``).

A manifest has one row per utterance with the columns (JSONL: keys)

- ``dialog``: the dialog's id (any string); rows of a dialog need not be adjacent,
- ``utt``: the utterance's position in its dialog (an integer; the dialog is ordered by it),
- ``text``, and optionally ``speaker``,
- ``video``: the utterance's clip (an mp4 with its soundtrack, or a video whose sound is in ``audio``),
- ``audio``: optionally, a separate wav of the utterance,
- ``start`` / ``end``: optionally, the utterance's span in seconds inside a longer ``video`` (a whole dialog's).

Paths are absolute or relative to the manifest's folder. Media columns are read only when the model needs
them (a text-only model takes a manifest without any). A row that cannot be used is a :class:`Skip` with its
line and reason; the other rows are still read.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from m2fdist.raw.base import Corpus, Skip, Utterance, add_context
from m2fdist.raw.meld import MAX_FIELD, csv_rows, decode_csv_bytes

REQUIRED = ("dialog", "utt", "text")
OPTIONAL = ("speaker", "video", "audio", "start", "end")


def _number(value: Any, name: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} {value!r} is not a number of seconds") from None
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"{name} {value!r} must be a finite number >= 0")
    return x


def _path(value: Any, base: Path, name: str) -> Path | None:
    if value is None or value == "":
        return None
    if not isinstance(value, (str, Path)):
        raise ValueError(f"{name} must be a path, not {type(value).__name__}")
    path = Path(os.path.normpath(Path(value) if Path(value).is_absolute() else base / value))
    if not path.is_file():
        raise ValueError(f"{name} file missing: {path}")
    return path


def utterance(fields: Mapping[str, Any], base: Path, needs: str) -> Utterance:
    """One utterance from a row's fields; ValueError says why the row cannot be used.

    ``needs`` is what the model reads besides text: "A" (audio), "V" (video), both or neither. Media fields the
    model does not read are ignored, so their files need not exist.
    """
    text = fields.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("no text")
    speaker = fields.get("speaker") or ""
    if not isinstance(speaker, str):
        raise ValueError(f"speaker must be a string, not {type(speaker).__name__}")
    video = audio = None
    start = end = None
    if needs:
        video = _path(fields.get("video"), base, "video")
        audio = _path(fields.get("audio"), base, "audio") if "A" in needs else None
        if video is None and ("V" in needs or audio is None):
            want = "an mp4 (video), or a video and a wav (audio)" if "V" in needs else "a wav (audio) or an mp4"
            raise ValueError(f"no media: this model reads {'audio and video' if needs == 'AV' else needs}; "
                             f"give {want}")
        start, end = _number(fields.get("start"), "start"), _number(fields.get("end"), "end")
        if (start is None) != (end is None):
            raise ValueError("give both start and end, or neither")
        if start is not None and end <= start:
            raise ValueError(f"empty time span [{start} - {end}]")
    return Utterance(dataset="manifest", split="", dialog="", utt="", speaker=speaker, text=text,
                     label="", label_id=-1, start=start or 0.0, end=end or 0.0, video=str(video or ""), key="",
                     audio=str(audio) if audio else None, cut_start=start, cut_end=end)


def _rows(path: Path, required: tuple[str, ...] = REQUIRED) -> Iterable[tuple[int, dict[str, Any] | str]]:
    """(line, fields) per row, or (line, why the line is not a row); a CSV must have the ``required`` columns."""
    text = decode_csv_bytes(path.read_bytes())
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        # "\n" alone ends a JSONL line (a trailing "\r" is JSON whitespace): str.splitlines would also break at
        # U+2028, U+2029, \x85, \x1c-\x1e, \v and \f, which JSON allows unescaped inside a string
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield n, f"not JSON: {e.msg}"
                continue
            except RecursionError:  # [[[[... a few thousand deep: the parser's recursion, not a row
                yield n, "not JSON: nested too deeply"
                continue
            if not isinstance(row, dict):
                yield n, "not a JSON object"
            elif long := next(((k, len(v)) for k, v in row.items() if isinstance(v, str) and len(v) > MAX_FIELD),
                              None):
                yield n, f"field {long[0]} is {long[1]:,} characters, past the {MAX_FIELD:,} a field may hold"
            else:
                yield n, {str(k).strip().lower(): v for k, v in row.items()}
        return
    names, rows = csv_rows(text)
    if not names:
        raise ValueError(f"{path}: empty (no header row)")
    header = [h.strip().lower() for h in names]
    if missing := [c for c in required if c not in header]:
        more = required[len(REQUIRED):]
        raise ValueError(f"{path}: missing columns {missing}; a manifest has {', '.join(REQUIRED + OPTIONAL)}"
                         + (f", and for training {', '.join(more)}" if more else ""))
    for line, row in rows:
        if isinstance(row, str):
            yield line, row
        elif None in row:
            yield line, f"row has more fields than the header's {len(header)}"
        else:
            yield line, {h: row[n] for h, n in zip(header, names, strict=True)}


# A row's fields beyond predict's: the labelled reader's hook gives them (label, split) or raises ValueError (a skip).
Fields = Callable[[dict[str, Any]], dict[str, Any]]


def check_path(path: Path) -> Path:
    """``path`` as a manifest file, or the error that says why it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} not found")
    if path.suffix.lower() not in (".csv", ".jsonl", ".ndjson"):
        raise ValueError(f"{path}: a manifest is a .csv or .jsonl file")
    return path


def read_dialogs(path: Path, needs: str, fields: Fields | None = None, same: tuple[str, ...] = (),
                 required: tuple[str, ...] = REQUIRED) -> tuple[list[list[Utterance]], list[Skip]]:
    """The manifest's dialogs (in order of first appearance, each ordered by ``utt``) and its skipped rows.

    ``fields(row)`` adds attributes to each row's utterance (or raises ValueError: the row is a skip); those named
    in ``same`` must agree across a dialog's rows (a dialog lies in one split), else the later row is a skip.
    """
    path = check_path(path)
    dialogs: dict[str, dict[int, Utterance]] = {}
    first: dict[str, tuple[int, dict[str, Any]]] = {}  # dialog -> (line, fields) of its first row
    lines: dict[tuple[str, int], int] = {}
    skipped: list[Skip] = []
    for line, row in _rows(path, required):
        where = f"{path.name}:{line}"
        if isinstance(row, str):
            skipped.append(Skip("manifest", None, row, source=where))
            continue
        dialog, utt = (str(v).strip() if (v := row.get(k)) is not None else "" for k in ("dialog", "utt"))
        skip = Skip("manifest", None, "", dialog=dialog or None, utt=utt or None, source=where)
        try:
            if not dialog:
                raise ValueError("no dialog id")
            if not utt.lstrip("-").isdigit():
                raise ValueError(f"utt {utt!r} is not an integer (the utterance's position in its dialog)")
            if (dialog, int(utt)) in lines:
                raise ValueError(f"duplicate utterance (dialog {dialog!r} already has an utterance {int(utt)}, at "
                                 f"line {lines[dialog, int(utt)]})")
            extra = fields(row) if fields else {}
            skip.split = extra.get("split")
            if dialog in first and (mismatch := [k for k in same if extra[k] != first[dialog][1][k]]):
                k, (at, had) = mismatch[0], first[dialog]
                raise ValueError(f"dialog in two {k}s (this row says {extra[k]!r}; dialog {dialog!r} is in "
                                 f"{had[k]!r}, as line {at} says)")
            u = utterance(row, path.parent, needs)
        except ValueError as e:
            skip.reason = str(e)
            skipped.append(skip)
            continue
        for k, v in extra.items():
            setattr(u, k, v)
        u.dialog, u.utt, u.extra["source"] = dialog, str(int(utt)), where
        dialogs.setdefault(dialog, {})[int(utt)] = u
        first.setdefault(dialog, (line, extra))
        lines[dialog, int(utt)] = line
    return [[d[i] for i in sorted(d)] for d in dialogs.values()], skipped


def read_manifest(path: Path, needs: str = "AV", context: int = 8) -> Corpus:
    """The manifest's dialogs (in order of first appearance, each ordered by ``utt``) and its skipped rows.

    The corpus has one split, ``""``: a manifest read for prediction says nothing about splits or labels.
    """
    ordered, skipped = read_dialogs(path, needs)
    for di, d in enumerate(ordered):
        for ui, u in enumerate(d):
            u.key = f"d{di}_u{ui}"
    add_context(ordered, context)
    return Corpus("manifest", {"": ordered} if ordered else {}, skipped)
