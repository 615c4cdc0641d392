"""Label sets: the two corpora's fixed ones, and how a run finds its own.

MELD's and IEMOCAP's order is part of the shard format (``label_id`` in every sample's json), so it never
changes. A manifest corpus (``m2fdist pack manifest``) brings its own set. Either way a run's label names come
from one place, its shards' ``index.json`` (``label_names``), which the config checks copy into the run
config's ``labels``; from there they reach the model's outputs, the class weights, the export, the model card,
the report and prediction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

MELD_LABELS: tuple[str, ...] = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")

# The ERC setup keeps these six IEMOCAP labels separate; xxx, oth, sur, fea, dis are left out.
IEMOCAP_LABELS: tuple[str, ...] = ("neu", "hap", "sad", "ang", "exc", "fru")

LABELS: dict[str, tuple[str, ...]] = {"meld": MELD_LABELS, "iemocap": IEMOCAP_LABELS}

# What ``dataset`` may name: a corpus with a fixed label set, or ``manifest``, anyone's labelled dialogs packed from
# a CSV / JSONL manifest, whose label set is its shards' own.
MANIFEST = "manifest"
DATASETS: tuple[str, ...] = (*LABELS, MANIFEST)

# Most classes a label set may name: index.json is input (shards may come from anyone), and a run builds one output
# per name.
MAX_LABELS = 10_000


def label_id(dataset: str, label: str) -> int | None:
    """Index of ``label`` in ``dataset``'s fixed label set, or None when the corpus does not use it."""
    names = LABELS[dataset]
    return names.index(label) if label in names else None


def run_labels(dataset: str, labels: Sequence[str] | None) -> list[str]:
    """A run's label names in id order: those its config took from its shards' index.json, or, for a config
    saved before configs recorded them (only MELD and IEMOCAP existed then), its corpus's fixed set."""
    if labels:
        return list(labels)
    return list(LABELS.get(dataset, ()))


def check_label_names(names: object, whose: str) -> list[str]:
    """``names`` as a label set: a non-empty list of distinct non-empty strings; ValueError naming ``whose`` labels
    they are (``"the export's"``)."""
    if not isinstance(names, list) or not names or not all(isinstance(x, str) and x.strip() for x in names):
        raise ValueError(f"{whose} labels must be a non-empty list of names, not {names!r:.200}")
    if len(names) > MAX_LABELS:
        raise ValueError(f"{whose} labels are {len(names):,} names, more than the {MAX_LABELS:,} a run may have")
    # two outputs of one name would have their probabilities collapse onto it (a dict keyed by label)
    if duplicated := sorted(x for x, n in Counter(names).items() if n > 1):
        raise ValueError(f"{whose} labels name {', '.join(map(repr, duplicated[:5]))} more than once: {names!r:.300}")
    return list(names)
