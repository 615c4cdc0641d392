"""Reader for IEMOCAP_full_release.

Labels and time spans come from ``dialog/EmoEvaluation``, text from ``dialog/transcriptions``, audio
from ``sentences/wav`` and video from the dialog's avi, out of which the packer cuts each turn's span.
Sessions 1–4 train, with a seeded fraction of their dialogs held out as dev; session 5 is test.
Without media (``media=False``, text-only packing) the wav and avi files are neither needed nor probed.
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

from m2fdist.common.labels import IEMOCAP_LABELS, label_id
from m2fdist.raw.base import Corpus, Skip, Utterance, add_context, make_key

_EVAL = re.compile(r"^\[(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\]\t(\S+)\t(\S+)\t")
_TRANS = re.compile(r"^(\S+)\s+\[(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)\]:\s?(.*)$")
_SESSION = re.compile(r"^Session(\d+)$")


def parse_evaluation(path: Path) -> list[tuple[float, float, str, str]]:
    """(start, end, turn, label) for every turn line of an EmoEvaluation file."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = _EVAL.match(line)
        if m:
            out.append((float(m.group(1)), float(m.group(2)), m.group(3), m.group(4)))
    return out


def parse_transcription(path: Path) -> dict[str, str]:
    """turn → text; noise lines without a time span (``M: [BREATHING]``) carry no turn and are ignored."""
    out = {}
    for line in path.read_text(errors="replace").splitlines():
        m = _TRANS.match(line.strip())
        if m:
            out[m.group(1)] = m.group(4).strip()
    return out


def speaker_of(turn: str) -> str:
    """``Ses01F_impro01_M000`` was spoken by session 1's male actor, ``Ses01M``."""
    gender = turn.rsplit("_", 1)[-1][:1]
    return turn[:5] + gender


def dev_dialogs(train_dialogs: list[str], fraction: float, seed: int) -> set[str]:
    """A seeded ``fraction`` of sessions 1–4's dialogs, the same on every machine."""
    names = sorted(train_dialogs)
    random.Random(seed).shuffle(names)
    return set(names[: round(fraction * len(names))])


def find_root(root: Path) -> Path:
    """The folder holding Session1..Session5: ``root`` itself, or a folder up to two levels below it (archives
    unpack as ``IEMOCAP_full_release/`` or ``IEMOCAP/IEMOCAP_full_release/``), ``IEMOCAP_full_release`` first."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"IEMOCAP root {root} is not a directory")

    def has_sessions(p: Path) -> bool:
        return any(c.is_dir() and _SESSION.match(c.name) for c in p.iterdir())

    if has_sessions(root):
        return root
    for depth in ("*", "*/*"):
        hits = sorted(p for p in root.glob(depth) if p.is_dir() and has_sessions(p))
        if hits:
            named = [p for p in hits if p.name == "IEMOCAP_full_release"]
            return (named or hits)[0]
    raise FileNotFoundError(f"no Session1..Session5 folders in {root} or up to two levels below it (looked for "
                            "IEMOCAP_full_release/Session1...): give the IEMOCAP_full_release folder or one above it")


def read_iemocap(
    root: Path, context: int = 8, dev_fraction: float = 0.1, dev_seed: int = 0, test_session: int = 5,
    media: bool = True,
) -> Corpus:
    root = find_root(root)
    print(f"IEMOCAP: reading {root}", file=sys.stderr)
    sessions = sorted(
        (int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _SESSION.match(p.name))
    )
    skipped: list[Skip] = []
    per_dialog: dict[str, tuple[int, list[Utterance]]] = {}
    for number, session in sessions:
        eval_dir = session / "dialog" / "EmoEvaluation"
        if not eval_dir.is_dir():
            skipped.append(Skip("iemocap", None, "session has no dialog/EmoEvaluation", source=str(session)))
            continue
        for eval_file in sorted(eval_dir.glob("*.txt")):
            dialog = eval_file.stem
            per_dialog[dialog] = (number, _read_dialog(session, dialog, eval_file, skipped, media))
    train_names = [d for d, (s, _) in per_dialog.items() if s != test_session]
    dev = dev_dialogs(train_names, dev_fraction, dev_seed)
    splits: dict[str, list[list[Utterance]]] = {"train": [], "dev": [], "test": []}
    for dialog in sorted(per_dialog):
        number, utts = per_dialog[dialog]
        split = "test" if number == test_session else ("dev" if dialog in dev else "train")
        for u in utts:
            u.split = split
            u.key = make_key("iemocap", split, u.utt)
        if utts:
            splits[split].append(utts)
    for s in skipped:
        if s.split is None and s.dialog in per_dialog:
            number = per_dialog[s.dialog][0]
            s.split = "test" if number == test_session else ("dev" if s.dialog in dev else "train")
    for dialogs in splits.values():
        add_context(dialogs, context)
    return Corpus("iemocap", {k: v for k, v in splits.items() if v}, skipped, IEMOCAP_LABELS)


def _read_dialog(session: Path, dialog: str, eval_file: Path, skipped: list[Skip],
                 media: bool = True) -> list[Utterance]:
    turns = parse_evaluation(eval_file)
    trans_file = session / "dialog" / "transcriptions" / f"{dialog}.txt"
    texts = parse_transcription(trans_file) if trans_file.is_file() else {}
    avi = session / "dialog" / "avi" / "DivX" / f"{dialog}.avi"
    utts = []
    for start, end, turn, label in sorted(turns):
        wav = session / "sentences" / "wav" / dialog / f"{turn}.wav"
        skip = Skip("iemocap", None, "", dialog=dialog, utt=turn, source=str(wav))
        lid = label_id("iemocap", label)
        if lid is None:
            skip.reason = f"label {label!r} is not one of the six ERC labels"
        elif media and not avi.is_file():
            skip.reason, skip.source = "dialog video missing", str(avi)
        elif media and not wav.is_file():
            skip.reason = "sentence wav missing"
        elif turn not in texts:
            skip.reason, skip.source = "no transcription line", str(trans_file)
        elif media and end <= start:  # the span only matters for cutting media
            skip.reason = f"empty time span [{start} - {end}]"
        if skip.reason:
            skipped.append(skip)
            continue
        extra: dict = {"session": int(session.name[7:])}
        if not media:  # text only: the sample's source is its transcription file
            extra["source"] = str(trans_file)
        utts.append(Utterance(
            dataset="iemocap", split="", dialog=dialog, utt=turn, speaker=speaker_of(turn), text=texts[turn],
            label=label, label_id=lid, start=start, end=end, video=str(avi) if media else "", key="",
            audio=str(wav) if media else None, cut_start=start, cut_end=end, extra=extra,
        ))
    return utts
