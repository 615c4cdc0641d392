"""The three modalities, named once: every module that spells text / audio / visual, their letters (the
fusion config's ``modalities: TAV``), the shard members that carry them and the fusion key of their feature
width reads this table.

No heavy imports here: pack workers, the CLI and the config checks all use it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Modality:
    name: str  # the stage and extractor name: text, audio, visual
    letter: str  # as in fusion.modalities (T, A, V) and the report's ablation rows
    member: str  # the packed utterance sample's member that carries it (text lives in the .json)
    feature: str  # the dialog feature sample's member: [k, D] float .npy
    dim_key: str  # fusion config key of its feature width D (set from the features' index.json when 0)


MODALITIES: tuple[Modality, ...] = (
    Modality("text", "T", "json", "text.npy", "dim_text"),
    Modality("audio", "A", "wav", "audio.npy", "dim_audio"),
    Modality("visual", "V", "mp4", "visual.npy", "dim_visual"),
)
NAMES: tuple[str, ...] = tuple(m.name for m in MODALITIES)
LETTERS = "".join(m.letter for m in MODALITIES)
BY_NAME: dict[str, Modality] = {m.name: m for m in MODALITIES}
BY_LETTER: dict[str, Modality] = {m.letter: m for m in MODALITIES}
NAME_OF: dict[str, str] = {m.letter: m.name for m in MODALITIES}  # "T" → "text"

# The trained stages, in the order the pipeline runs them: one per modality's model, then their fusion. Also the
# parts of a bundle (the stage exports it holds) and the run folders under a pipeline's RUNS.
STAGES: tuple[str, ...] = (*NAMES, "fusion")

# What `m2fdist pack --modalities` accepts: every modality, or the annotations' text alone.
PACKED = (",".join(NAMES), "text")
# Members a dialog feature sample may hold besides the modalities' features.
FEATURE_EXTRAS = ("json", "labels.npy")


def fusion_reads(letters: str) -> tuple[str, ...]:
    """The extractors a fusion model over ``letters`` (``TAV``, ``T``...) needs, in stage order: text always (its
    vectors carry the dialog's utterances and their speakers) and the others its letters name."""
    return tuple(m.name for m in MODALITIES if m.name == "text" or m.letter in letters)


def members_for(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The utterance-shard members a reader of these modalities needs, ``json`` (metadata, text) first."""
    return tuple(dict.fromkeys(["json", *(BY_NAME[n].member for n in names)]))


def known_members() -> set[str]:
    """Every member name a packed or feature shard of ours may hold."""
    return {*(m.member for m in MODALITIES), *(m.feature for m in MODALITIES), *FEATURE_EXTRAS}
