"""Label sets of the two corpora, in the order their ids are assigned.

The order is part of the shard format (``label_id`` in every sample's json), so it never changes.
"""

MELD_LABELS: tuple[str, ...] = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")

# The ERC setup keeps these six IEMOCAP labels separate; xxx, oth, sur, fea, dis are left out.
IEMOCAP_LABELS: tuple[str, ...] = ("neu", "hap", "sad", "ang", "exc", "fru")

LABELS: dict[str, tuple[str, ...]] = {"meld": MELD_LABELS, "iemocap": IEMOCAP_LABELS}


def label_id(dataset: str, label: str) -> int | None:
    """Index of ``label`` in ``dataset``'s label set, or None when the corpus does not use it."""
    names = LABELS[dataset]
    return names.index(label) if label in names else None
