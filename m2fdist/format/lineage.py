"""What a product was made from: the identity of every input it read, recorded with it and compared on a rerun.

The pipeline skips a step whose product exists. That alone bundled a retrained text stage with features
extracted by the old one and a fusion model trained on those: a product is current only if what it was made
from is still what is there. So each product records its inputs' identities (``made_from``), and the pipeline
compares them with the inputs' identities now.

Identities are cheap, because the files can be large (an 8B text encoder is 16 GB):

- an export's is the sha256 of its weights file, computed once when the export is written and kept in its
  ``config.json`` (``weights_sha256``); an export written before that is hashed when asked;
- a shards or features folder's is the sha256 of its ``index.json`` (a few kB; a features index records the
  identities of the exports extraction read, so re-extracted features with other extractors differ).

A training run's record is ``made_from.json`` in its folder; extraction's is ``made_from`` in the features'
``index.json`` (and in every rank's stats file, so an interrupted extraction resumed with other exports starts
that split again); a bundle's and a report's are ``made_from`` in their own JSON.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from m2fdist.common import atomic
from m2fdist.format.exports import CONFIG, WEIGHTS, read_json
from m2fdist.format.index import INDEX_NAME
from m2fdist.format.source import scheme_of

WEIGHTS_SHA = "weights_sha256"  # an export's config.json: the sha256 of its model.safetensors
MADE_FROM = "made_from"  # a features index, a bundle's config.json, a report: {input: identity}
RECORD = "made_from.json"  # a training run's record, in its output folder
_HEX = re.compile(r"[0-9a-f]{64}")


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB pieces (a weights file need not fit in memory), as hex."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def export_id(path: Path) -> str:
    """An export's identity, ``sha256:HEX`` of its weights: the value its config.json records, else the file's."""
    path = Path(path)
    meta = read_json(path / CONFIG) if (path / CONFIG).is_file() else {}
    said = meta.get(WEIGHTS_SHA) if isinstance(meta, dict) else None
    return f"sha256:{said if isinstance(said, str) and _HEX.fullmatch(said) else file_sha256(path / WEIGHTS)}"


def shards_id(location: str | Path) -> str | None:
    """A local shards or features folder's identity, ``sha256:HEX`` of its index.json; None where there is none
    yet, or for a URL (a remote index is not fetched to compare)."""
    if scheme_of(str(location)):
        return None
    index = Path(location) / INDEX_NAME
    return f"index sha256:{file_sha256(index)}" if index.is_file() else None


def read_record(folder: Path) -> dict[str, Any] | None:
    """A training run's ``made_from.json``; None when it has none (trained by hand, or before runs recorded it)."""
    file = Path(folder) / RECORD
    if not file.is_file():
        return None
    record = read_json(file)
    return record if isinstance(record, dict) else None


def write_record(folder: Path, inputs: dict[str, Any]) -> None:
    """Record what a training run in ``folder`` is made from, before it starts (so a resumed run is checked too)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    atomic.write_json(Path(folder) / RECORD, inputs)


def _short(identity: Any) -> str:
    """An identity as a person compares it on the console: its kind and the first 12 hex digits."""
    text = str(identity)
    kind, _, digest = text.rpartition(":")
    return f"{kind}:{digest[:12]}" if kind else text[:24]


def changes(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between a product's record and its inputs now, one phrase each ("text: sha256:ab… → …")."""
    return [f"{key}: {_short(recorded.get(key, '(none)'))} → {_short(now.get(key, '(none)'))}"
            for key in sorted(set(recorded) | set(now)) if recorded.get(key) != now.get(key)]
