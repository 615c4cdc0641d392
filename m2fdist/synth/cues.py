"""Per-emotion cues and the ambiguity model of the synthetic corpora.

Every label leaves a learnable trace in each modality (cue words, a voice with its own pitch, energy
and rate, a scene colour and a face look), but each modality shows the true label's cue only with
probability ``p_*`` and otherwise a random other label's. So no single modality can be read perfectly,
and a model that fuses all three beats any one of them, which is what M2FNet's fusion has to show.
Labels outside a corpus's set (IEMOCAP's xxx, MELD's planted "contempt") have no cue of their own and
get random ones, so they are noise that a reader is expected to drop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class CueConfig:
    """How often each modality tells the truth, and how labels are spread over a corpus."""
    p_text: float = 0.7
    p_audio: float = 0.6
    p_video: float = 0.6
    # Chance that an utterance repeats the previous one's label, so dialog context carries signal.
    p_repeat: float = 0.35
    # Relative label frequencies; MELD's train counts softened (square root) so rare labels still occur.
    meld_weights: dict[str, float] = field(
        default_factory=lambda: {
            "neutral": 68.6,
            "joy": 41.7,
            "surprise": 34.7,
            "anger": 33.3,
            "sadness": 26.1,
            "disgust": 16.5,
            "fear": 16.4,
        }
    )
    # IEMOCAP's six-way counts (roughly as published); the rest of the turns are "other" labels.
    iemocap_weights: dict[str, float] = field(
        default_factory=lambda: {"neu": 1708, "hap": 648, "sad": 1084, "ang": 1103, "exc": 1041, "fru": 1849}
    )
    iemocap_other: float = 0.12
    iemocap_other_labels: tuple[str, ...] = ("xxx", "xxx", "oth", "sur", "fea", "dis")


@dataclass(frozen=True)
class Cues:
    """Which label's cue each modality of one utterance shows (the truth or a decoy)."""
    text: str
    audio: str
    video: str


def draw_cues(rng: np.random.Generator, label: str, labels: tuple[str, ...], cfg: CueConfig) -> Cues:
    """Draw each modality's cue independently, so their errors are uncorrelated and fusion pays."""
    def one(p: float) -> str:
        if label not in labels:
            return str(rng.choice(labels))
        if rng.random() < p:
            return label
        others = [x for x in labels if x != label]
        return str(others[rng.integers(len(others))])

    return Cues(text=one(cfg.p_text), audio=one(cfg.p_audio), video=one(cfg.p_video))


def label_sequence(rng: np.random.Generator, n: int, weights: dict[str, float], p_repeat: float) -> list[str]:
    """Labels of one dialog: i.i.d. draws, sometimes repeating the previous label (emotional inertia).

    Mixing "repeat" with fresh draws keeps the marginal distribution equal to ``weights``.
    """
    names = list(weights)
    p = np.array([weights[k] for k in names], dtype=float)
    p /= p.sum()
    out: list[str] = []
    for i in range(n):
        if i > 0 and rng.random() < p_repeat:
            out.append(out[-1])
        else:
            out.append(names[rng.choice(len(names), p=p)])
    return out


# ---------------------------------------------------------------- text
# Both corpora's label names; IEMOCAP's short names share the MELD cue of the same emotion.
_ALIASES = {"neu": "neutral", "hap": "joy", "sad": "sadness", "ang": "anger"}


def cue_key(label: str) -> str:
    """The key of ``label``'s entry in the cue tables (IEMOCAP's neu/hap/sad/ang share MELD's)."""
    return _ALIASES.get(label, label)


TEXT_CUES: dict[str, tuple[str, ...]] = {
    "neutral": ("okay", "I see", "sure", "alright then", "that’s the plan", "fine, noted"),
    "joy": ("this is great", "I love it", "wonderful", "I’m so happy", "that’s amazing", "yay"),
    "surprise": ("what?!", "no way", "really?", "oh my god", "seriously?", "wow, wait"),
    "anger": ("shut up", "I hate this", "get out", "how dare you", "that’s it, I’m done", "you jerk"),
    "sadness": ("I miss her", "I’m so sorry", "it hurts", "I feel awful", "nobody cares", "I lost it"),
    "disgust": ("gross", "ew", "that’s disgusting", "yuck", "nasty", "that smells awful"),
    "fear": ("I’m scared", "help me", "oh no", "what was that noise", "I’m terrified", "don’t leave me"),
    "exc": ("this is so exciting", "I can’t wait", "yes, finally", "let’s go", "best day ever", "woo"),
    "fru": (
        "this is ridiculous",
        "I’ve been waiting forever",
        "why won’t anyone help",
        "whatever",
        "not again",
        "this never works",
    ),
}

_OPENERS = ("Well…", "So,", "Hey,", "Um,", "Listen,", "You know,", "I mean,", "Oh,", "Look,", "", "", "")
_CLOSERS = (
    "I’m just saying.",
    "anyway…",
    "about the apartment.",
    "at the coffee house.",
    "",
    "",
    "",
    "you know?",
    "right now.",
    "I guess…",
    "and that’s that.",
    "with the thing tomorrow.",
)


def sentence(rng: np.random.Generator, cue_label: str, ascii_only: bool = False) -> str:
    """A template sentence carrying ``cue_label``'s cue words among neutral filler.

    MELD's texts keep the typographic ’ and … (they are what makes its CSVs cp1252); IEMOCAP's
    transcripts are plain ASCII.
    """
    cues = TEXT_CUES[cue_key(cue_label)]
    cue = cues[rng.integers(len(cues))]
    opener = _OPENERS[rng.integers(len(_OPENERS))]
    closer = _CLOSERS[rng.integers(len(_CLOSERS))]
    body = cue if cue[-1] in "?!." else cue + ("." if closer == "" else ",")
    if closer and body[-1] in "?!.":
        closer = closer[0].upper() + closer[1:]
    text = " ".join(x for x in (opener, body, closer) if x)
    text = text[0].upper() + text[1:]
    if ascii_only:
        text = text.replace("’", "'").replace("…", "...")
    return text


MELD_SPEAKERS = ("Ross", "Rachel", "Monica", "Chandler", "Joey", "Phoebe")
MELD_GUESTS = ("Gunther", "Janice", "Mike", "Emily", "Carol", "Mr. Geller", "Mrs. Green")
FEMALE = {"Rachel", "Monica", "Phoebe", "Janice", "Emily", "Carol", "Mrs. Green"}


# ---------------------------------------------------------------- voice
@dataclass(frozen=True)
class Voice:
    """A label's voice: pitch (Hz), loudness (peak amplitude), syllables per second, pitch slope (/s)."""
    f0: float
    amp: float
    rate: float
    slope: float


VOICES: dict[str, Voice] = {
    "neutral": Voice(140, 0.25, 3.5, 0.0),
    "joy": Voice(240, 0.45, 5.0, 0.15),
    "surprise": Voice(300, 0.50, 4.0, 0.5),
    "anger": Voice(190, 0.75, 6.0, -0.05),
    "sadness": Voice(110, 0.15, 2.5, -0.15),
    "disgust": Voice(160, 0.35, 3.0, -0.1),
    "fear": Voice(260, 0.30, 6.5, 0.1),
    "exc": Voice(280, 0.60, 5.5, 0.25),
    "fru": Voice(170, 0.55, 4.5, -0.1),
}


def voice_for(rng: np.random.Generator, cue_label: str, female: bool) -> Voice:
    """The cue label's voice with per-utterance jitter and a mild speaker offset, so classes overlap a bit."""
    v = VOICES[cue_key(cue_label)]
    gender = 1.05 if female else 0.9
    return Voice(
        f0=float(v.f0 * gender * rng.uniform(0.92, 1.08)),
        amp=float(v.amp * rng.uniform(0.85, 1.15)),
        rate=float(v.rate * rng.uniform(0.9, 1.1)),
        slope=float(v.slope + rng.uniform(-0.05, 0.05)),
    )


# ---------------------------------------------------------------- video
@dataclass(frozen=True)
class Look:
    """A label's picture: scene (background) colour, face tint and brightness, face size (crop height
    as a fraction of the frame height; 0.6 keeps the face >= 60 px tall at 180 px) and horizontal place."""
    scene: tuple[int, int, int]
    tint: tuple[float, float, float]
    brightness: float
    scale: float
    x: float = 0.5


LOOKS: dict[str, Look] = {
    "neutral": Look((120, 120, 120), (1.0, 1.0, 1.0), 1.0, 0.66),
    "joy": Look((235, 200, 60), (1.1, 1.05, 0.9), 1.15, 0.78),
    "surprise": Look((60, 200, 220), (1.0, 1.0, 1.1), 1.1, 0.86),
    "anger": Look((190, 40, 40), (1.25, 0.85, 0.85), 0.95, 0.80),
    "sadness": Look((40, 60, 140), (0.85, 0.9, 1.15), 0.75, 0.62),
    "disgust": Look((110, 140, 40), (0.95, 1.15, 0.85), 0.9, 0.70),
    "fear": Look((70, 30, 100), (0.95, 0.9, 1.1), 0.8, 0.64),
    "exc": Look((240, 120, 30), (1.15, 1.0, 0.85), 1.2, 0.82),
    "fru": Look((150, 90, 60), (1.1, 0.95, 0.9), 0.88, 0.72),
}

# What the IEMOCAP dialog video shows between turns.
GAP_LOOK = Look((128, 128, 128), (1.0, 1.0, 1.0), 1.0, 0.66)


def look_for(rng: np.random.Generator, cue_label: str, x: float | None = None) -> Look:
    """The cue label's look with per-utterance jitter; ``x`` pins the face's place (IEMOCAP speakers)."""
    lk = LOOKS[cue_key(cue_label)]
    scene = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in lk.scene)
    return Look(
        scene=scene,  # type: ignore[arg-type]
        tint=lk.tint,
        brightness=float(lk.brightness * rng.uniform(0.95, 1.05)),
        scale=float(max(0.6, lk.scale + rng.uniform(-0.04, 0.04))),
        x=float(x if x is not None else rng.uniform(0.35, 0.65)),
    )
