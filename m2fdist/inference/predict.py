"""The prediction engine behind :class:`m2fdist.api.M2FNet`: decode an utterance's media, run the stage models,
fuse a dialog's rows.

Media are decoded and run through the extractors a few utterances at a time, so memory does not grow with a
dialog's length; media that cannot be decoded are a skip, and the dialog's other utterances are still predicted.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from m2fdist.common.media import MediaError, audio_from_video, encode_utterance, probe
from m2fdist.common.modalities import NAME_OF
from m2fdist.data.decode import sample_frames
from m2fdist.faces.faceset import FaceSet, detect_clips
from m2fdist.models.device import device_of
from m2fdist.raw.base import Utterance

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


def decode_utterance(u: Utterance, audio_seconds: float, num_frames: int, needs: str = "AV") -> Decoded:
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
    feats = {"text": parts["text"][1].sentence_vectors(_metas(utterances))}
    if "A" in needs:
        audio = parts["audio"][1]
        device = device_of(audio)
        lengths = torch.tensor([len(d.wave) for d in decoded])
        padded = torch.zeros(len(decoded), int(lengths.max()))
        for i, d in enumerate(decoded):
            padded[i, : len(d.wave)] = d.wave
        feats["audio"] = audio(padded.to(device), lengths)
    if "V" in needs:
        visual = parts["visual"][1]
        device = device_of(visual)
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
        device = device_of(fusion)
        inputs = {NAME_OF[m]: feats[NAME_OF[m]][None].float().to(device) for m in parts_cfg.fusion.modalities}
        logits = fusion(torch.ones(1, len(good), dtype=torch.bool, device=device), **inputs)[0]
    else:
        logits = feats["logits"]
    probs = logits.float().softmax(-1).cpu().numpy()
    finite = np.isfinite(probs).all(axis=1)
    for u, ok in zip(good, finite, strict=True):
        if not ok:  # never NaN probabilities in the output (not even valid JSON): a skip with its reason
            reasons[u.key] = "the model's output is not finite (a diverged model?)"
    return ({u.key: p for u, p, ok in zip(good, probs, finite, strict=True) if ok}, reasons, notes)
