"""What a raw-corpus reader hands to the packer: utterances to pack and items it had to leave out.

Readers only look at the tree (CSV rows, file names, annotation files); decoding media is the packer's
job, so a reader over all of MELD takes seconds. Anything a reader cannot use becomes a :class:`Skip`
with a reason, never a silent drop.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

_KEY_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def make_key(*parts: str) -> str:
    """A WebDataset key: WebDataset splits a member name at its first dot, so keys never hold one."""
    return "_".join(_KEY_SAFE.sub("-", p) for p in parts)


@dataclass
class Utterance:
    """One utterance to pack; ``video`` (and for IEMOCAP ``audio``) point into the raw tree."""
    dataset: str
    split: str
    dialog: str
    utt: str
    speaker: str
    text: str
    label: str
    label_id: int
    start: float
    end: float
    video: str
    key: str
    audio: str | None = None
    # Time span to cut out of ``video``: IEMOCAP keeps one avi per dialog.
    cut_start: float | None = None
    cut_end: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return max(0.0, self.end - self.start)

    def meta(self) -> dict[str, Any]:
        """The json fields every sample carries, before packing adds its own."""
        d = asdict(self)
        for k in ("video", "audio", "cut_start", "cut_end", "extra", "key"):
            d.pop(k)
        d["source"] = self.video if self.audio is None else {"video": self.video, "audio": self.audio}
        d.update(self.extra)
        return d


@dataclass
class Skip:
    """A source item that was not packed, and why: one entry of ``index.json``'s ``skipped``."""
    dataset: str
    split: str | None
    reason: str
    dialog: str | None = None
    utt: str | None = None
    source: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Corpus:
    """A reader's result: per split, utterances grouped by dialog in order, plus the skips.

    ``labels`` names the classes in ``label_id`` order: what the shards' index.json will say (MELD's and IEMOCAP's
    fixed sets, a manifest's own); empty for a corpus read for prediction, which has none.
    """
    dataset: str
    splits: dict[str, list[list[Utterance]]]
    skipped: list[Skip]
    labels: tuple[str, ...] = ()

    def utterances(self, split: str) -> list[Utterance]:
        return [u for dialog in self.splits.get(split, []) for u in dialog]


def add_context(dialogs: list[list[Utterance]], size: int) -> None:
    """Store up to ``size`` previous and next utterances (speaker, text) in each sample's json.

    The text stage joins an utterance with its neighbours; keeping them in the sample lets an
    utterance-level loader build that input without seeing the rest of the dialog.
    """
    for dialog in dialogs:
        turns = [{"speaker": u.speaker, "text": u.text} for u in dialog]
        for i, u in enumerate(dialog):
            u.extra["context_prev"] = turns[max(0, i - size) : i]
            u.extra["context_next"] = turns[i + 1 : i + 1 + size]
            u.extra["position"] = i
