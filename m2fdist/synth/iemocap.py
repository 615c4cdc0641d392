"""A synthetic IEMOCAP_full_release tree: per-dialog EmoEvaluation and transcription files, per-turn
16 kHz wavs and one DivX avi per dialog, for the raw reader and the packer to be tested against.

As in the real corpus, a turn's audio exists twice (its sentence wav, and inside the dialog's avi at
the turn's times), turn indices count per speaker (``_F000, _F001, _M000``, so name order is not time
order; EmoEvaluation lists turns in name order), transcripts carry noise lines without a time span,
and about 12% of turns carry labels outside the six-way ERC set (xxx, oth, sur, fea, dis).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from m2fdist.common.labels import IEMOCAP_LABELS
from m2fdist.common.media import SAMPLE_RATE, write_wav
from m2fdist.synth.cues import GAP_LOOK, CueConfig, Cues, draw_cues, look_for, sentence, voice_for
from m2fdist.synth.render import Segment, encode, paint, run_jobs, voice

HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"
# Annotators' category names, and the mean valence/arousal/dominance of each label (1..5 scale).
CATEGORY = {
    "neu": "Neutral",
    "hap": "Happiness",
    "sad": "Sadness",
    "ang": "Anger",
    "exc": "Excited",
    "fru": "Frustration",
    "sur": "Surprise",
    "fea": "Fear",
    "dis": "Disgust",
    "oth": "Other",
}
VAD = {
    "neu": (2.5, 2.5, 2.5),
    "hap": (4.0, 3.0, 3.0),
    "sad": (1.75, 2.0, 2.25),
    "ang": (1.75, 4.0, 4.0),
    "exc": (4.0, 4.0, 3.0),
    "fru": (2.0, 3.5, 3.5),
    "sur": (3.5, 3.5, 2.5),
    "fea": (2.0, 3.5, 2.0),
    "dis": (2.0, 3.0, 3.0),
    "oth": (2.5, 2.5, 2.5),
    "xxx": (2.5, 3.0, 2.5),
}
SPEAKER_X = {"F": 0.3, "M": 0.7}  # where each actor's face sits in the dialog video
NOISES = ("[BREATHING]", "[LAUGHTER]", "[GARBAGE]")


@dataclass(frozen=True)
class Turn:
    """One planned turn: its name, time span (s, 4 decimals), speaker, label, cues and text."""
    name: str
    start: float
    end: float
    speaker: str
    label: str
    cues: Cues
    text: str


@dataclass(frozen=True)
class DialogJob:
    """What a worker needs to render one dialog's wavs and avi; plain data so it pickles under spawn."""
    root: str
    session: int
    dialog: str
    turns: tuple[Turn, ...]
    duration: float
    size: tuple[int, int]
    fps: int
    seed: int
    threads: int = 0


def render_dialog(job: DialogJob) -> str:
    """Write each turn's wav and the dialog's avi, whose soundtrack holds the same voices at their times."""
    rng = np.random.default_rng(job.seed)
    base = Path(job.root) / f"Session{job.session}"
    wav_dir = base / "sentences" / "wav" / job.dialog
    wav_dir.mkdir(parents=True, exist_ok=True)
    track = rng.normal(0.0, 0.003, int(round(job.duration * SAMPLE_RATE))).astype(np.float32)
    segments: list[Segment] = []
    t = 0.0
    for turn in job.turns:
        segments.append(Segment(t, turn.start, GAP_LOOK))
        segments.append(
            Segment(turn.start, turn.end, look_for(rng, turn.cues.video, SPEAKER_X[turn.speaker]))
        )
        pcm = voice(voice_for(rng, turn.cues.audio, turn.speaker == "F"), turn.end - turn.start, rng)
        write_wav(wav_dir / f"{turn.name}.wav", pcm)
        i0 = int(round(turn.start * SAMPLE_RATE))
        n = min(len(pcm), len(track) - i0)
        track[i0 : i0 + n] = pcm[:n]
        t = turn.end
    segments.append(Segment(t, job.duration + 1.0, GAP_LOOK))
    avi = base / "dialog" / "avi" / "DivX" / f"{job.dialog}.avi"
    avi.parent.mkdir(parents=True, exist_ok=True)
    n_frames = int(np.ceil(job.duration * job.fps))
    frames = paint(segments, n_frames, job.size, job.fps, job.seed ^ 0x5EED)
    encode(avi, frames, track, job.size, job.fps, job.duration, "avi", threads=job.threads)
    return str(avi)


def dialog_names(session: int, count: int) -> list[str]:
    """IEMOCAP-style names cycling over (actor wearing markers, improvised or scripted)."""
    pattern = (("F", "impro"), ("M", "script"), ("M", "impro"), ("F", "script"))
    seen: dict[tuple[str, str], int] = {}
    names = []
    for i in range(count):
        g, kind = pattern[i % len(pattern)]
        c = seen.get((g, kind), 0)
        seen[(g, kind)] = c + 1
        if kind == "impro":
            names.append(f"Ses{session:02d}{g}_impro{c + 1:02d}")
        else:
            names.append(f"Ses{session:02d}{g}_script{c // 3 + 1:02d}_{c % 3 + 1}")
    return names


def plan_dialog(rng: np.random.Generator, dialog: str, cfg: CueConfig) -> list[Turn]:
    """Alternating, non-overlapping turns with small gaps; labels mostly from the six, some "other"."""
    names = list(cfg.iemocap_weights)
    p = np.array([cfg.iemocap_weights[k] for k in names], dtype=float)
    p /= p.sum()
    speaker = "F" if rng.random() < 0.5 else "M"
    index = {"F": 0, "M": 0}
    t = float(rng.uniform(0.5, 2.0))
    prev = ""
    turns = []
    for _ in range(int(rng.integers(4, 9))):
        if prev in names and rng.random() < cfg.p_repeat:
            label = prev
        else:
            label = names[rng.choice(len(names), p=p)]
        if rng.random() < cfg.iemocap_other:
            label = str(rng.choice(cfg.iemocap_other_labels))
        prev = label
        start = round(t, 4)
        end = round(start + float(rng.uniform(1.0, 3.0)), 4)
        cues = draw_cues(rng, label, IEMOCAP_LABELS, cfg)
        name = f"{dialog}_{speaker}{index[speaker]:03d}"
        turns.append(Turn(name, start, end, speaker, label, cues, sentence(rng, cues.text, ascii_only=True)))
        index[speaker] += 1
        speaker = "M" if speaker == "F" else "F"
        t = end + float(rng.uniform(0.1, 0.6))
    return turns


def emo_evaluation(rng: np.random.Generator, turns: list[Turn]) -> str:
    """The EmoEvaluation file: header, then per turn its label line and a few annotators' lines."""
    lines = [HEADER, ""]
    for tr in turns:
        v, a, d = (float(np.clip(x + rng.choice([-0.5, 0.0, 0.0, 0.5]), 1.0, 5.0)) for x in VAD[tr.label])
        lines.append(f"[{tr.start:.4f} - {tr.end:.4f}]\t{tr.name}\t{tr.label}\t[{v:.4f}, {a:.4f}, {d:.4f}]")
        for who in ("C-E1", "C-E2", "C-E3"):
            cat = CATEGORY.get(tr.label)
            if cat is None or rng.random() < 0.25:  # xxx means the annotators did not agree
                cat = str(rng.choice(list(CATEGORY.values())))
            lines.append(f"{who}:\t{cat};\t()")
        for who in ("A-E1", "A-E2"):
            val, act, dom = (int(np.clip(round(x + rng.choice([-1, 0, 0, 1])), 1, 5)) for x in (v, a, d))
            lines.append(f"{who}:\tval {val}; act {act}; dom  {dom};\t()")
        lines.append("")
    return "\n".join(lines) + "\n"


def transcription(rng: np.random.Generator, turns: list[Turn]) -> str:
    """The transcription file: one line per turn, with now and then a noise line that has no span."""
    lines = []
    for tr in turns:
        lines.append(f"{tr.name} [{tr.start:08.4f}-{tr.end:08.4f}]: {tr.text}")
        if rng.random() < 0.15:
            lines.append(f"{rng.choice(['F', 'M'])}: {rng.choice(NOISES)}")
    return "\n".join(lines) + "\n"


def synth_iemocap(
    out: Path,
    dialogs: int,
    seed: int,
    size: tuple[int, int] = (320, 180),
    fps: int = 24,
    workers: int = 1,
    progress: bool = True,
    cfg: CueConfig | None = None,
) -> dict:
    """Write an IEMOCAP_full_release-shaped tree at ``out`` with ``dialogs`` dialogs in each of the five
    sessions; return its manifest."""
    cfg = cfg or CueConfig()
    out = Path(out)
    rng = np.random.default_rng(seed)
    jobs: list[DialogJob] = []
    utterances: list[dict[str, Any]] = []
    threads = 1 if workers > 1 else 0
    for s in range(1, 6):
        base = out / f"Session{s}" / "dialog"
        for sub in ("EmoEvaluation/Categorical", "transcriptions", "avi/DivX"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        for dialog in dialog_names(s, dialogs):
            turns = plan_dialog(rng, dialog, cfg)
            # Like the real files, EmoEvaluation lists turns by name (speaker by speaker), transcriptions
            # by time: a reader has to order turns by their start times itself.
            by_name = sorted(turns, key=lambda tr: tr.name)
            (base / "EmoEvaluation" / f"{dialog}.txt").write_text(emo_evaluation(rng, by_name))
            # The real tree keeps per-annotator files in subfolders beside the summary files.
            cat = "".join(f"{tr.name} :{CATEGORY.get(tr.label, 'Other')};\t()\n" for tr in by_name)
            (base / "EmoEvaluation" / "Categorical" / f"{dialog}_e1_cat.txt").write_text(cat)
            (base / "transcriptions" / f"{dialog}.txt").write_text(transcription(rng, turns))
            duration = round(turns[-1].end + float(rng.uniform(0.5, 1.5)), 4)
            jobs.append(
                DialogJob(
                    str(out), s, dialog, tuple(turns), duration, size, fps, int(rng.integers(2**63)), threads
                )
            )
            for tr in turns:
                utterances.append(
                    {
                        "split": f"Session{s}",
                        "dialog": dialog,
                        "utt": tr.name,
                        "label": tr.label,
                        "text": tr.text,
                        "clip": f"Session{s}/sentences/wav/{dialog}/{tr.name}.wav",
                        "duration": round(tr.end - tr.start, 4),
                        "speaker": tr.speaker,
                        "start": tr.start,
                        "end": tr.end,
                        "video": f"Session{s}/dialog/avi/DivX/{dialog}.avi",
                        "cues": {"text": tr.cues.text, "audio": tr.cues.audio, "video": tr.cues.video},
                    }
                )
    jobs.sort(key=lambda j: -j.duration)
    run_jobs(render_dialog, jobs, workers, progress, "synth iemocap")
    manifest = {
        "layout": "iemocap",
        "seed": seed,
        "size": list(size),
        "fps": fps,
        "utterances": utterances,
        "planted": [],
    }
    text = json.dumps(manifest, indent=1) + "\n"
    (out / "synth_manifest.json").write_text(text, encoding="utf-8")
    return manifest
