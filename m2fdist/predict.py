"""``m2fdist predict --model MODEL (--manifest FILE | --root DIR)``: each utterance's emotion and probabilities.

MODEL is an exported M2FNet bundle (the pipeline writes it as ``RUNS/model``; ``M2FNet.save_pretrained``
writes the same): ``text/``, ``audio/``, ``visual/``, ``fusion/`` stage exports, or ``text/`` alone for a
text-only model. Its labels are the ones it was trained with (MELD's seven, IEMOCAP's six).

Input is a CSV or JSONL manifest (columns dialog, utt, speaker, text, video, audio, start, end; any folder
layout, paths relative to the manifest) or a raw tree in MELD's or IEMOCAP's layout (the Emotion column may be
missing or empty). A text-only model needs no media. Output is JSON (default) or CSV, one row per utterance;
an utterance that cannot be read or decoded is a row with ``skipped`` and the reason.
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from m2fdist.data.decode import sample_frames
from m2fdist.extract import text_features
from m2fdist.faces import FaceSet, detect_clips
from m2fdist.media import MediaError, audio_from_video, encode_utterance, probe
from m2fdist.modalities import NAME_OF

# Cutting a span out of a longer video re-encodes it as packing does (its defaults): the extractors saw that.
SPAN_MAX_SIDE, SPAN_MAX_SECONDS = 320, 60.0


@dataclass
class Decoded:
    """One utterance's media as the extractors take it, and what was left out of it."""

    wave: torch.Tensor | None
    frames: torch.Tensor | None
    note: str | None = None  # e.g. "audio: used the first 8 s of 12.4 s"


def _check_streams(path: str, want: str, probed: dict[str, tuple]) -> float | None:
    """The file's duration, after checking it has a ``want`` stream; each file is probed once."""
    if path not in probed:
        probed[path] = probe(path)
    duration, has_video, has_audio = probed[path]
    if not (has_video if want == "video" else has_audio):
        raise MediaError(f"no {want} stream in {Path(path).name}")
    return duration


def decode_utterance(u, audio_seconds: float, num_frames: int, needs: str = "AV") -> Decoded:
    """Decode what the model reads of an utterance: its sound (capped at the audio model's length, as in
    training) when ``needs`` has A, sampled frames when it has V.

    Sound comes from ``u.audio`` (a wav) when given, else from the clip; a span (``cut_start``/``cut_end``) is
    cut out of a longer video as packing cuts it. Raises MediaError for media that cannot be decoded, at the
    probe or after it: the caller records a skip.
    """
    if u.cut_start is not None and u.video:
        with tempfile.TemporaryDirectory(prefix="m2fdist-predict-") as tmp:
            mp4, wav = Path(tmp) / "u.mp4", Path(tmp) / "u.wav"
            enc = encode_utterance(Path(u.video), mp4, wav, max_side=SPAN_MAX_SIDE, max_seconds=SPAN_MAX_SECONDS,
                                   start=u.cut_start, end=u.cut_end, audio=Path(u.audio) if u.audio else None)
            cut = type(u)(**{**u.__dict__, "video": str(mp4), "audio": str(wav), "cut_start": None, "cut_end": None})
            decoded = decode_utterance(cut, audio_seconds, num_frames, needs)
        if enc.trimmed:
            decoded.note = f"video: used the first {SPAN_MAX_SECONDS:g} s of {enc.source_duration:.1f} s"
        return decoded
    wave = frames = note = None
    probed: dict[str, tuple] = {}
    if "V" in needs:
        _check_streams(u.video, "video", probed)
    if "A" in needs:
        sound = u.audio or u.video
        duration = _check_streams(sound, "audio", probed)
        wave = audio_from_video(Path(sound), max_seconds=audio_seconds)
        if len(wave) == 0:
            raise MediaError("no audio decoded")
        wave = torch.from_numpy(wave)
        if duration is not None and duration > audio_seconds + 0.05:
            note = f"audio: used the first {audio_seconds:g} s of {duration:.1f} s"
    if "V" in needs:
        frames = torch.from_numpy(sample_frames(u.video, num_frames))
    return Decoded(wave, frames, note)


def _metas(utterances: list) -> list[dict[str, Any]]:
    return [{**u.extra, "text": u.text, "speaker": u.speaker} for u in utterances]  # as packed into the json


@torch.no_grad()
def utterance_features(parts: dict[str, Any], utterances: list, decoded: list[Decoded], needs: str = "AV",
                       faces: FaceSet | None = None) -> dict[str, Tensor]:
    """Text, audio and visual features [n, D] of a few decoded utterances, through the same paths as extraction."""
    feats = {"text": text_features(parts["text"][1], _metas(utterances))}
    if "A" in needs:
        audio = parts["audio"][1]
        device = next(audio.parameters()).device
        lengths = torch.tensor([len(d.wave) for d in decoded])
        padded = torch.zeros(len(decoded), int(lengths.max()))
        for i, d in enumerate(decoded):
            padded[i, : len(d.wave)] = d.wave
        feats["audio"] = audio(padded.to(device), lengths)
    if "V" in needs:
        visual = parts["visual"][1]
        device = next(visual.parameters()).device
        clips = [d.frames for d in decoded]
        hw = torch.tensor([[c.shape[1], c.shape[2]] for c in clips])
        frames = torch.zeros((len(clips), clips[0].shape[0], int(hw[:, 0].max()), int(hw[:, 1].max()), 3),
                             dtype=torch.uint8)
        for i, c in enumerate(clips):
            frames[i, :, : c.shape[1], : c.shape[2]] = c
        frames = frames.to(device)
        boxes = None
        if visual.face is not None:
            keys = [u.key for u in utterances]
            boxes = faces.boxes(keys, hw, visual.config.min_face_prob, device) if faces else None
            if boxes is None:  # MTCNN on each clip at its own size (never on padding)
                found = detect_clips(visual.detector, clips, device)
                boxes = [[b[p >= visual.config.min_face_prob].to(device) for b, p in clip] for clip in found]
        feats["visual"] = visual(frames, hw, boxes)
    return feats


def needs_of(parts: dict[str, Any]) -> str:
    """What a bundle reads besides text: "AV", "A", "V" or "" (text-only models, fusion over T alone)."""
    if "fusion" not in parts:
        return ""
    return "".join(m for m in "AV" if m in parts["fusion"][0].fusion.modalities)


@torch.no_grad()
def predict_dialog(parts: dict[str, Any], utterances: list, chunk: int = 16, faces: FaceSet | None = None,
                   on_utterance: Any = None) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, str]]:
    """(probabilities [C] by key, skip reasons by key, notes by key) for one dialog's utterances.

    Media are decoded and run through the extractors ``chunk`` utterances at a time, so memory does not grow
    with the dialog's length; only the dialog's feature rows go to the fusion model together. Media that
    cannot be decoded are a skip; the dialog's other utterances are still predicted. A text-only bundle's
    text classifier scores each utterance (with its neighbours' text) directly.
    """
    needs = needs_of(parts)
    parts_cfg = parts["fusion"][0] if "fusion" in parts else parts["text"][0]
    audio_seconds = parts["audio"][0].audio.seconds if "A" in needs else 0.0
    num_frames = parts["visual"][0].data.num_frames if "V" in needs else 0
    feats_parts, good, reasons, notes = [], [], {}, {}
    for i in range(0, len(utterances), chunk):
        ok, decoded = [], []
        for u in utterances[i : i + chunk]:
            try:
                decoded.append(decode_utterance(u, audio_seconds, num_frames, needs) if needs else Decoded(None, None))
                ok.append(u)
            except MediaError as e:
                reasons[u.key] = e.reason
        if ok and "fusion" in parts:
            feats_parts.append(utterance_features(parts, ok, decoded, needs, faces))
        elif ok:  # text only: the text model's own head
            text = parts["text"][1]
            feats_parts.append({"logits": text(**text.tokenize_metas(_metas(ok)))})
        good += ok
        notes.update({u.key: d.note for u, d in zip(ok, decoded, strict=True) if d.note})
        if on_utterance is not None:
            on_utterance(len(utterances[i : i + chunk]))
    if not good:
        return {}, reasons, notes
    feats = {name: torch.cat([p[name] for p in feats_parts]) for name in feats_parts[0]}
    if "fusion" in parts:
        fusion = parts["fusion"][1]
        device = next(fusion.parameters()).device
        inputs = {NAME_OF[m]: feats[NAME_OF[m]][None].float().to(device) for m in parts_cfg.fusion.modalities}
        logits = fusion(torch.ones(1, len(good), dtype=torch.bool, device=device), **inputs)[0]
    else:
        logits = feats["logits"]
    probs = logits.float().softmax(-1).cpu().numpy()
    return dict(zip([u.key for u in good], probs, strict=True)), reasons, notes


# -- the command ------------------------------------------------------------------------------------------


def read_input(model: Any, manifest: Path | None, root: Path | None, layout: str | None):
    """The corpus to predict on: a manifest, or a raw tree in ``layout`` (default: the model's dataset's)."""
    if manifest is not None:
        from m2fdist.raw.manifest import read_manifest

        return read_manifest(manifest, needs=model.needs)
    layout = layout or model.dataset
    if layout == "iemocap":
        from m2fdist.raw.iemocap import read_iemocap

        corpus = read_iemocap(root, media=bool(model.needs))
    else:
        from m2fdist.raw.meld import read_meld

        corpus = read_meld(root, require_labels=False, media=bool(model.needs))
    return corpus


def predict_rows(model: Any, corpus: Any, batch_size: int = 16, faces: Path | None = None,
                 progress: bool = False) -> list[dict[str, Any]]:
    """One row per utterance of the corpus (and per skipped source row): emotion and probabilities, or why not."""
    results = model.predict_corpus(corpus, batch_size=batch_size, faces=faces, progress=progress)
    rows = []
    for split, dialogs in corpus.splits.items():
        for dialog in dialogs:
            for u in dialog:
                row = {"split": split, "dialog": u.dialog, "utt": u.utt, "speaker": u.speaker, "text": u.text,
                       **results[u.key]}
                if row["emotion"] is None:
                    print(f"skipped {split} {u.dialog} {u.utt}: {row['skipped']}".replace("  ", " "), file=sys.stderr)
                rows.append(row)
    for s in corpus.skipped:
        print(f"skipped {s.source or ''} {s.split or ''} {s.dialog or ''} {s.utt or ''}: {s.reason}", file=sys.stderr)
        if corpus.dataset == "manifest":  # a manifest's bad rows are rows of the output too
            rows.append({"split": "", "dialog": s.dialog, "utt": s.utt, "speaker": None, "text": None,
                         "emotion": None, "probs": None, "skipped": f"{s.source}: {s.reason}"})
    return rows


def write_rows(rows: list[dict[str, Any]], labels: list[str], fmt: str, out: Any) -> None:
    if fmt == "json":
        json.dump(rows, out, indent=1, ensure_ascii=False)
        out.write("\n")
        return
    writer = csv.writer(out)
    writer.writerow(["split", "dialog", "utt", "speaker", "text", "emotion", *labels, "skipped", "note"])
    for r in rows:
        probs = [r["probs"][n] for n in labels] if r["probs"] else [""] * len(labels)
        writer.writerow([r["split"], r["dialog"], r["utt"], r["speaker"], r["text"], r["emotion"] or "", *probs,
                         r.get("skipped", ""), r.get("note", "")])


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="m2fdist predict", description="Each utterance's emotion and class "
                                "probabilities, from an exported M2FNet.",
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]).replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="exported M2FNet bundle (RUNS/model, or a folder "
                   "written by M2FNet.save_pretrained)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", type=Path, help="CSV or JSONL: dialog, utt, speaker, text, video, audio, start, "
                     "end (paths relative to the manifest's folder)")
    src.add_argument("--root", type=Path, help="a raw tree in MELD's or IEMOCAP's layout")
    p.add_argument("--layout", choices=["meld", "iemocap"], default=None,
                   help="--root's layout (default: that of the dataset the model was trained on)")
    p.add_argument("--format", choices=["json", "csv"], default="json")
    p.add_argument("--out", type=Path, default=None, help="default: standard output")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when available)")
    p.add_argument("--batch-size", "--chunk", dest="batch_size", type=int, default=16,
                   help="utterances decoded and run through the extractors at once (memory does not grow with a "
                        "dialog's length)")
    p.add_argument("--faces", type=Path, default=None, help="face set (m2fdist faces) of shards packed from "
                   "these clips: its boxes, joined by key, replace MTCNN (MELD / IEMOCAP layouts)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on standard error")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    from m2fdist.api import M2FNet

    try:
        model = M2FNet.from_pretrained(args.model, device=args.device)
        corpus = read_input(model, args.manifest, args.root, args.layout)
        rows = predict_rows(model, corpus, args.batch_size, args.faces, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as e:
        print(f"m2fdist predict: {e}", file=sys.stderr)
        return 2
    out = args.out.open("w", newline="") if args.out else sys.stdout
    try:
        write_rows(rows, model.labels, args.format, out)
    finally:
        if args.out:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
