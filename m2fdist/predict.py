"""``m2fdist predict --model MODEL --root DIR``: each utterance's emotion and class probabilities.

MODEL is an exported M2FNet: a folder with the four stage exports ``text/``, ``audio/``, ``visual/``,
``fusion/`` (the pipeline writes it as ``RUNS/model``). DIR holds clips and a CSV in MELD's layout; the
Emotion column may be missing or empty. Output is JSON (default) or CSV.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from m2fdist.data.decode import sample_frames
from m2fdist.export import load_exported
from m2fdist.extract import text_features
from m2fdist.faces import FaceSet, FaceSettings, detect_clips
from m2fdist.labels import LABELS
from m2fdist.media import audio_from_video
from m2fdist.raw.meld import read_meld

PARTS = ("text", "audio", "visual", "fusion")


def load_model(path: Path) -> dict[str, Any]:
    missing = [p for p in PARTS if not (Path(path) / p / "model.safetensors").is_file()]
    if missing:
        raise FileNotFoundError(f"{path} lacks the exports {missing}: expected {', '.join(PARTS)} sub-folders "
                                "(the pipeline writes them to RUNS/model)")
    return {p: load_exported(Path(path) / p) for p in PARTS}


@dataclass
class Decoded:
    """One utterance's media as the extractors take it, and what was left out of it."""

    wave: torch.Tensor
    frames: torch.Tensor
    note: str | None = None  # e.g. "audio: used the first 8 s of 12.4 s"


def decode_utterance(u, audio_seconds: float, num_frames: int) -> Decoded:
    """Decode a clip's soundtrack (capped at what the audio model reads, as in training) and sampled frames.

    Raises MediaError for a clip that cannot be decoded, at the probe or after it: the caller records a skip.
    """
    from m2fdist.media import MediaError, probe

    duration, has_video, has_audio = probe(u.video)
    if not (has_video and has_audio):
        raise MediaError("clip lacks a video or audio stream")
    wave = audio_from_video(Path(u.video), max_seconds=audio_seconds)
    if len(wave) == 0:
        raise MediaError("no audio decoded")
    frames = torch.from_numpy(sample_frames(u.video, num_frames))
    note = None
    if duration is not None and duration > audio_seconds + 0.05:
        note = f"audio: used the first {audio_seconds:g} s of {duration:.1f} s"
    return Decoded(torch.from_numpy(wave), frames, note)


@torch.no_grad()
def utterance_features(model: dict[str, Any], utterances: list, decoded: list[Decoded],
                       faces: FaceSet | None = None) -> dict[str, Tensor]:
    """Text, audio and visual features [n, D] of a few decoded utterances, through the same paths as extraction."""
    _, text = model["text"]
    _, visual = model["visual"]
    _, audio = model["audio"]
    metas = [{**u.extra, "text": u.text, "speaker": u.speaker} for u in utterances]  # as packed into the json
    feats = {"text": text_features(text, metas)}
    lengths = torch.tensor([len(d.wave) for d in decoded])
    padded = torch.zeros(len(decoded), int(lengths.max()))
    for i, d in enumerate(decoded):
        padded[i, : len(d.wave)] = d.wave
    feats["audio"] = audio(padded, lengths)
    clips = [d.frames for d in decoded]
    hw = torch.tensor([[c.shape[1], c.shape[2]] for c in clips])
    frames = torch.zeros((len(clips), clips[0].shape[0], int(hw[:, 0].max()), int(hw[:, 1].max()), 3),
                         dtype=torch.uint8)
    for i, c in enumerate(clips):
        frames[i, :, : c.shape[1], : c.shape[2]] = c
    boxes = None
    if visual.face is not None:
        keys = [u.key for u in utterances]
        boxes = faces.boxes(keys, hw, visual.config.min_face_prob) if faces else None
        if boxes is None:  # MTCNN on each clip at its own size (never on padding)
            found = detect_clips(visual.detector, clips, frames.device)
            boxes = [[b[p >= visual.config.min_face_prob] for b, p in clip] for clip in found]
    feats["visual"] = visual(frames, hw, boxes)
    return feats


@torch.no_grad()
def predict_dialog(model: dict[str, Any], utterances: list, chunk: int = 16, faces: FaceSet | None = None
                   ) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, str]]:
    """(probabilities [C] by key, skip reasons by key, notes by key) for one dialog's utterances.

    Clips are decoded and run through the extractors ``chunk`` utterances at a time, so memory does not grow
    with the dialog's length; only the dialog's feature rows go to the fusion model together. A clip that
    cannot be decoded is a skip; the dialog's other utterances are still predicted.
    """
    from m2fdist.media import MediaError

    audio_seconds = model["audio"][0].audio.seconds
    num_frames = model["visual"][0].data.num_frames
    fus_cfg, fusion = model["fusion"]
    parts, good, reasons, notes = [], [], {}, {}
    for i in range(0, len(utterances), chunk):
        ok, decoded = [], []
        for u in utterances[i : i + chunk]:
            try:
                decoded.append(decode_utterance(u, audio_seconds, num_frames))
                ok.append(u)
            except MediaError as e:
                reasons[u.key] = e.reason
        if ok:
            parts.append(utterance_features(model, ok, decoded, faces))
            good += ok
            notes.update({u.key: d.note for u, d in zip(ok, decoded, strict=True) if d.note})
    if not good:
        return {}, reasons, notes
    feats = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
    from m2fdist.modalities import NAME_OF as mods
    inputs = {mods[m]: feats[mods[m]][None].float() for m in fus_cfg.fusion.modalities}
    logits = fusion(torch.ones(1, len(good), dtype=torch.bool), **inputs)[0]
    return dict(zip([u.key for u in good], logits.softmax(-1).numpy(), strict=True)), reasons, notes


def predict(model_dir: Path, root: Path, chunk: int = 16, faces: Path | None = None) -> list[dict[str, Any]]:
    """One row per utterance of the tree: the emotion and probabilities, or why the utterance was skipped."""
    model = load_model(model_dir)
    face_set = None
    if faces is not None:
        vis_cfg = model["visual"][0]
        face_set = FaceSet(faces, FaceSettings(vis_cfg.data.num_frames, vis_cfg.visual.min_face_size))
    names = list(LABELS["meld"])
    corpus = read_meld(root, require_labels=False)
    rows = []
    for split, dialogs in corpus.splits.items():
        for dialog in dialogs:
            probs, reasons, notes = predict_dialog(model, dialog, chunk, face_set)
            for u in dialog:
                row = {"split": split, "dialog": u.dialog, "utt": u.utt, "speaker": u.speaker, "text": u.text}
                if u.key in probs:
                    p = probs[u.key]
                    row.update(emotion=names[int(p.argmax())],
                               probs={n: round(float(x), 6) for n, x in zip(names, p, strict=True)})
                    if u.key in notes:
                        row["note"] = notes[u.key]
                else:
                    row.update(emotion=None, probs=None, skipped=reasons[u.key])
                    print(f"skipped {split} dia{u.dialog}_utt{u.utt}: {reasons[u.key]}", file=sys.stderr)
                rows.append(row)
    for s in corpus.skipped:
        print(f"skipped {s.split} dia{s.dialog}_utt{s.utt}: {s.reason}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="m2fdist predict", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="exported M2FNet folder (RUNS/model)")
    p.add_argument("--root", type=Path, required=True, help="clips + CSV in MELD's layout")
    p.add_argument("--format", choices=["json", "csv"], default="json")
    p.add_argument("--out", type=Path, default=None, help="default: standard output")
    p.add_argument("--chunk", type=int, default=16, help="utterances through the extractors at once (memory "
                   "does not grow with a dialog's length)")
    p.add_argument("--faces", type=Path, default=None, help="face set (m2fdist faces) of shards packed from "
                   "these clips: its boxes, joined by key, replace MTCNN")
    args = p.parse_args(argv)
    if args.chunk < 1:
        p.error("--chunk must be >= 1")
    try:
        rows = predict(args.model, args.root, args.chunk, args.faces)
    except (FileNotFoundError, ValueError) as e:
        print(f"m2fdist predict: {e}", file=sys.stderr)
        return 2
    out = args.out.open("w", newline="") if args.out else sys.stdout
    if args.format == "json":
        json.dump(rows, out, indent=1, ensure_ascii=False)
        out.write("\n")
    else:
        names = list(LABELS["meld"])
        writer = csv.writer(out)
        writer.writerow(["split", "dialog", "utt", "speaker", "text", "emotion", *names, "skipped", "note"])
        for r in rows:
            probs = [r["probs"][n] for n in names] if r["probs"] else [""] * len(names)
            writer.writerow([r["split"], r["dialog"], r["utt"], r["speaker"], r["text"], r["emotion"] or "", *probs,
                             r.get("skipped", ""), r.get("note", "")])
    if args.out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
