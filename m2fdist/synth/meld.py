"""A synthetic MELD.Raw tree: cp1252 CSVs, per-utterance H.264/AAC clips, and (optionally) MELD's known
bad files, so the raw reader and the packer meet every oddity of the real corpus without the 10 GB download.

Everything that a reader can compare (CSV rows, texts, labels, the manifest) is planned up front from one
seeded generator in this process; workers only turn planned jobs into media, so a run is reproducible
whatever ``workers`` is.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from m2fdist.common.labels import MELD_LABELS
from m2fdist.synth.cues import (
    FEMALE,
    MELD_GUESTS,
    MELD_SPEAKERS,
    CueConfig,
    Cues,
    draw_cues,
    label_sequence,
    look_for,
    sentence,
    voice_for,
)
from m2fdist.synth.render import Segment, encode, paint, run_jobs, voice

COLUMNS = [
    "Sr No.",
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "StartTime",
    "EndTime",
]
FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
SENTIMENT = {
    "neutral": "neutral",
    "surprise": "neutral",
    "joy": "positive",
    "anger": "negative",
    "sadness": "negative",
    "disgust": "negative",
    "fear": "negative",
    "contempt": "negative",
}

# Dialogs MELD's bad files live in, and how many utterances each needs so the bad one exists.
SPECIAL: dict[str, dict[int, int]] = {"train": {125: 4, 309: 1}, "dev": {110: 8}, "test": {220: 1, 38: 5}}
LONG_SECONDS = 100.0


@dataclass
class Utt:
    """One planned CSV row (and its clip)."""
    split: str
    dialog: int
    utt: int
    speaker: str
    label: str
    cues: Cues
    text: str
    season: int
    episode: int
    start_ms: int
    end_ms: int
    seed: int
    kind: str = "ok"  # ok | corrupt | long | missing

    @property
    def name(self) -> str:
        return f"dia{self.dialog}_utt{self.utt}.mp4"

    @property
    def rel(self) -> str:
        return f"{FOLDERS[self.split]}/{self.name}"


@dataclass(frozen=True)
class ClipJob:
    """Everything a worker needs to render one clip; plain data so it pickles under spawn."""
    path: str
    duration: float
    clip_seconds: float
    size: tuple[int, int]
    fps: int
    audio_label: str
    video_label: str
    female: bool
    seed: int
    corrupt: bool = False
    threads: int = 0


def render_clip(job: ClipJob) -> str:
    """Render one clip; a long clip continues past the utterance with other "scenes" of the episode,
    and a corrupt one is written with its moov atom last and then cut in half."""
    rng = np.random.default_rng(job.seed)
    segments = [Segment(0.0, job.duration, look_for(rng, job.video_label))]
    audio = [voice(voice_for(rng, job.audio_label, job.female), job.duration, rng)]
    t = job.duration
    while t < job.clip_seconds - 1e-6:
        d = min(float(rng.uniform(1.0, 3.0)), job.clip_seconds - t)
        other = MELD_LABELS[rng.integers(len(MELD_LABELS))]
        segments.append(Segment(t, t + d, look_for(rng, other)))
        audio.append(voice(voice_for(rng, other, bool(rng.random() < 0.5)), d, rng))
        t += d
    n_frames = max(1, int(round(job.clip_seconds * job.fps)))
    frames = paint(segments, n_frames, job.size, job.fps, job.seed ^ 0x5EED)
    path = Path(job.path)
    encode(
        path,
        frames,
        np.concatenate(audio),
        job.size,
        job.fps,
        job.clip_seconds,
        "mp4",
        faststart=not job.corrupt,
        threads=job.threads,
    )
    if job.corrupt:
        os.truncate(path, path.stat().st_size // 2)
    return job.path


def dialog_ids(count: int, special: dict[int, int]) -> list[int]:
    """The special ids plus the smallest other ids, ``count`` in all (or just the specials if more)."""
    fill, i = [], 0
    while len(fill) < count - len(special):
        if i not in special:
            fill.append(i)
        i += 1
    return sorted(set(fill) | set(special))


def hms(ms: int) -> str:
    """MELD's time stamp format, hh:mm:ss,mmm."""
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, milli = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{milli:03d}"


def plan(dialogs: int, seed: int, bad_files: bool, cfg: CueConfig, dev_dialogs: int | None = None,
         test_dialogs: int | None = None) -> tuple[dict[str, list[Utt]], Any]:
    """All rows of the three splits, and the random choices for planted files, from one generator.

    Dev and test default to MELD's proportions of train (11% and 27%); a small corpus can ask for more, so
    that its scores are not decided by a handful of utterances.
    """
    rng = np.random.default_rng(seed)
    counts = {"train": dialogs,
              "dev": max(2, round(0.11 * dialogs)) if dev_dialogs is None else dev_dialogs,
              "test": max(2, round(0.27 * dialogs)) if test_dialogs is None else test_dialogs}
    for split in ("dev", "test"):
        if counts[split] < 1:
            raise ValueError(f"{split}: {counts[split]} dialogs; a split needs at least one")
    rows: dict[str, list[Utt]] = {}
    for split, count in counts.items():
        special = SPECIAL[split] if bad_files else {}
        rows[split] = []
        for d in dialog_ids(count, special):
            n = int(rng.integers(max(3, special.get(d, 0)), 9))
            cast = list(rng.choice(MELD_SPEAKERS, size=int(rng.integers(2, 4)), replace=False))
            if rng.random() < 0.2:
                cast.append(str(rng.choice(MELD_GUESTS)))
            season, episode = int(rng.integers(1, 11)), int(rng.integers(1, 25))
            t = int(rng.integers(30_000, 1_200_000))
            speaker = ""
            for u, label in enumerate(label_sequence(rng, n, cfg.meld_weights, cfg.p_repeat)):
                speaker = str(rng.choice([c for c in cast if c != speaker]))
                dur = int(rng.integers(1000, 3001))
                cues = draw_cues(rng, label, MELD_LABELS, cfg)
                text = sentence(rng, cues.text)
                rows[split].append(
                    Utt(
                        split,
                        d,
                        u,
                        speaker,
                        label,
                        cues,
                        text,
                        season,
                        episode,
                        t,
                        t + dur,
                        int(rng.integers(2**63)),
                    )
                )
                t += dur + int(rng.integers(0, 301))
    return rows, rng


def write_csv(path: Path, rows: list[Utt]) -> None:
    """Write one split's CSV in cp1252, as MELD ships it (’ is byte 0x92, … is 0x85)."""
    with open(path, "w", encoding="cp1252", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for i, r in enumerate(rows, start=1):
            w.writerow(
                [
                    i,
                    r.text,
                    r.speaker,
                    r.label,
                    SENTIMENT[r.label],
                    r.dialog,
                    r.utt,
                    r.season,
                    r.episode,
                    hms(r.start_ms),
                    hms(r.end_ms),
                ]
            )


def synth_meld(
    out: Path,
    dialogs: int,
    seed: int,
    size: tuple[int, int] = (320, 180),
    fps: int = 24,
    bad_files: bool = False,
    workers: int = 1,
    progress: bool = True,
    cfg: CueConfig | None = None,
    dev_dialogs: int | None = None,
    test_dialogs: int | None = None,
) -> dict:
    """Write a MELD.Raw-shaped tree at ``out`` with ``dialogs`` train dialogs; return its manifest."""
    cfg = cfg or CueConfig()
    out = Path(out)
    rows, rng = plan(dialogs, seed, bad_files, cfg, dev_dialogs, test_dialogs)
    planted: list[dict[str, Any]] = []
    extra: list[tuple[str, int, int]] = []  # (split, dialog, utt) of clips without a CSV row
    twins: list[Utt] = []
    if bad_files:
        find = {(r.split, r.dialog, r.utt): r for rs in rows.values() for r in rs}
        for kind, key in (
            ("corrupt", ("train", 125, 3)),
            ("missing", ("dev", 110, 7)),
            ("long", ("test", 220, 0)),
            ("long", ("test", 38, 4)),
            ("long", ("train", 309, 0)),
        ):
            find[key].kind = kind
        for split in FOLDERS:
            extra.append((split, max(r.dialog for r in rows[split]) + 1, 0))
        plain = [r for r in rows["test"] if r.kind == "ok"]
        twins = [plain[i] for i in sorted(rng.choice(len(plain), size=2, replace=False))]
        plain = [r for r in rows["train"] if r.kind == "ok"]
        bad = plain[int(rng.integers(len(plain)))]
        bad.label, bad.kind = "contempt", "bad_label"
        bad.cues = draw_cues(rng, bad.label, MELD_LABELS, cfg)
        bad.text = sentence(rng, bad.cues.text)

    for split in FOLDERS:
        (out / FOLDERS[split]).mkdir(parents=True, exist_ok=True)
        write_csv(out / f"{split}_sent_emo.csv", rows[split])

    threads = 1 if workers > 1 else 0
    jobs: list[ClipJob] = []
    for r in (r for rs in rows.values() for r in rs):
        if r.kind == "missing":
            planted.append(_planted("missing", r.split, r.dialog, r.utt, r.rel))
            continue
        dur = (r.end_ms - r.start_ms) / 1000
        jobs.append(
            ClipJob(
                str(out / r.rel),
                dur,
                LONG_SECONDS if r.kind == "long" else dur,
                size,
                fps,
                r.cues.audio,
                r.cues.video,
                r.speaker in FEMALE,
                r.seed,
                corrupt=r.kind == "corrupt",
                threads=threads,
            )
        )
        if r.kind != "ok":
            planted.append(_planted(r.kind, r.split, r.dialog, r.utt, r.rel))
    for split, d, u in extra:
        rel = f"{FOLDERS[split]}/dia{d}_utt{u}.mp4"
        dur = int(rng.integers(1000, 3001)) / 1000
        lab = MELD_LABELS[rng.integers(len(MELD_LABELS))]
        jobs.append(
            ClipJob(
                str(out / rel),
                dur,
                dur,
                size,
                fps,
                lab,
                lab,
                bool(rng.random() < 0.5),
                int(rng.integers(2**63)),
                threads=threads,
            )
        )
        planted.append(_planted("no_row", split, d, u, rel))
    jobs.sort(key=lambda j: -j.clip_seconds)  # long clips first, so a pool does not end on one of them
    run_jobs(render_clip, jobs, workers, progress, "synth meld")

    for r in twins:
        rel = f"{FOLDERS['test']}/final_videos_testdia{r.dialog}_utt{r.utt}.mp4"
        shutil.copyfile(out / r.rel, out / rel)
        planted.append(_planted("twin", "test", r.dialog, r.utt, rel))

    manifest = {
        "layout": "meld",
        "seed": seed,
        "size": list(size),
        "fps": fps,
        "utterances": [
            {
                "split": r.split,
                "dialog": r.dialog,
                "utt": r.utt,
                "label": r.label,
                "text": r.text,
                "clip": None if r.kind == "missing" else r.rel,
                "duration": (r.end_ms - r.start_ms) / 1000,
                "speaker": r.speaker,
                "start": r.start_ms / 1000,
                "end": r.end_ms / 1000,
                "cues": {"text": r.cues.text, "audio": r.cues.audio, "video": r.cues.video},
            }
            for rs in rows.values()
            for r in rs
        ],
        "planted": planted,
    }
    text = json.dumps(manifest, indent=1, ensure_ascii=False) + "\n"
    (out / "synth_manifest.json").write_text(text, encoding="utf-8")
    return manifest


def _planted(kind: str, split: str, dialog: int, utt: int, path: str) -> dict[str, Any]:
    return {"kind": kind, "split": split, "dialog": dialog, "utt": utt, "path": path}
