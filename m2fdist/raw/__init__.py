"""Readers of raw corpora: they pair annotations with media files and record what they leave out.

``manifest`` is anyone's labelled dialogs in a CSV / JSONL manifest (:mod:`m2fdist.raw.labelled`); its "root" is
the manifest file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from m2fdist.raw.base import Corpus, Skip, Utterance
from m2fdist.raw.iemocap import read_iemocap
from m2fdist.raw.labelled import read_labelled_manifest
from m2fdist.raw.meld import read_meld

READERS = {"meld": read_meld, "iemocap": read_iemocap, "manifest": read_labelled_manifest}


def read_corpus(dataset: str, root: Path, **options: Any) -> Corpus:
    """The corpus of ``root`` read by ``dataset``'s reader (``READERS``: the one place a layout picks its reader)."""
    if dataset not in READERS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(READERS)}")
    return READERS[dataset](Path(root), **options)


__all__ = ["Corpus", "Skip", "Utterance", "read_corpus", "read_meld", "read_iemocap", "read_labelled_manifest",
           "READERS"]
