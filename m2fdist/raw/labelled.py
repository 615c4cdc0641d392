"""Anyone's labelled dialogs, for training: the manifest ``m2fdist predict`` reads, plus ``label`` and ``split``.

``m2fdist pack manifest --manifest FILE`` packs it into the same shards as MELD and IEMOCAP (text only, or with
each utterance's clip: an mp4, a video and a separate wav, or a span ``start``/``end`` of a longer recording).

- ``label``: the utterance's class, any name. The label set is the data's own, sorted (so the same rows give the
  same ids on every machine), or the one ``--labels a,b,c`` gives in that order; a label outside it is a skip.
- ``split``: train, dev or test. A dialog lies in one split: a row whose split differs from its dialog's first
  row is a skip. ``--dev-fraction F`` holds out a seeded fraction F of the train dialogs as dev (IEMOCAP's own
  draw, :func:`~m2fdist.raw.iemocap.dev_dialogs`), and lets rows without a split be train.

Every row that cannot be used (duplicate ``dialog``/``utt``, a missing file, no text, no label or one outside
``--labels``, a bad split) is a :class:`~m2fdist.raw.base.Skip` naming its line, as MELD's reader records them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from m2fdist.common.labels import MANIFEST, check_label_names
from m2fdist.raw.base import Corpus, Utterance, add_context, make_key
from m2fdist.raw.iemocap import dev_dialogs
from m2fdist.raw.manifest import REQUIRED, Fields, read_dialogs

SPLITS = ("train", "dev", "test")
TRAINING = ("label",)  # columns a training manifest adds to predict's (split is optional with --dev-fraction)


def parse_labels(text: str | None) -> tuple[str, ...] | None:
    """``--labels a,b,c`` → ("a", "b", "c"); None or "" leaves the label set to the data."""
    if not text:
        return None
    return tuple(check_label_names([x.strip() for x in text.split(",")], "--labels:"))


def _field(value: Any) -> str:
    """A label or split as text: CSV gives strings, JSONL may give numbers (label 3); anything else is no value."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return ""
    return str(value).strip()


def _row_fields(labels: tuple[str, ...] | None, dev_fraction: float | None) -> Fields:
    """The hook :func:`~m2fdist.raw.manifest.read_dialogs` calls per row: its label and split, or why not."""
    def fields(row: dict[str, Any]) -> dict[str, Any]:
        label = _field(row.get("label"))
        if not label:
            raise ValueError("no label")
        if labels is not None and label not in labels:
            raise ValueError(f"label {label!r} is not one of --labels {','.join(labels)}")
        split = _field(row.get("split")).lower()
        if not split and dev_fraction is None:
            raise ValueError("no split: give train, dev or test (or pack with --dev-fraction, which makes rows "
                             "without one train and holds out a seeded fraction of the train dialogs as dev)")
        if split and split not in SPLITS:
            raise ValueError(f"split {split!r} is not train, dev or test")
        return {"label": label, "split": split or "train"}
    return fields


def read_labelled_manifest(path: Path, context: int = 8, media: bool = True, labels: Sequence[str] | None = None,
                           dev_fraction: float | None = None, dev_seed: int = 0) -> Corpus:
    """The manifest's dialogs by split, their labels' ids assigned, and every row left out with why.

    ``media=False`` (text-only packing) reads the text alone: media columns are ignored, their files need not exist.
    """
    chosen = tuple(check_label_names(list(labels), "--labels:")) if labels else None
    if dev_fraction is not None and not 0 < dev_fraction < 1:
        raise ValueError(f"--dev-fraction must be between 0 and 1 (exclusive), not {dev_fraction}")
    dialogs, skipped = read_dialogs(Path(path), "AV" if media else "", _row_fields(chosen, dev_fraction),
                                    same=("split",), required=REQUIRED + TRAINING)
    if not dialogs:
        reasons = "; ".join(f"{s.source}: {s.reason}" for s in skipped[:3])
        raise ValueError(f"{path}: no row can be used" + (f" ({reasons}{' ...' if len(skipped) > 3 else ''})"
                                                          if reasons else " (no rows)"))
    names = chosen or tuple(sorted({u.label for d in dialogs for u in d}))
    if dev_fraction is not None:
        held = dev_dialogs([d[0].dialog for d in dialogs if d[0].split == "train"], dev_fraction, dev_seed)
        for d in dialogs:
            if d[0].dialog in held:
                for u in d:
                    u.split = "dev"
    splits: dict[str, list[list[Utterance]]] = {}
    for di, d in enumerate(dialogs):  # numbered in order of first appearance: keys are stable and dot-free
        for ui, u in enumerate(d):
            u.dataset, u.label_id = MANIFEST, names.index(u.label)
            u.key = make_key(MANIFEST, u.split, f"d{di:05d}", f"u{ui:03d}")
        splits.setdefault(d[0].split, []).append(d)
    for split_dialogs in splits.values():
        add_context(split_dialogs, context)
    ordered = {s: splits[s] for s in SPLITS if s in splits}
    return Corpus(MANIFEST, ordered, skipped, names)
