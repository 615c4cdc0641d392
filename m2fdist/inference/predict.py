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

from m2fdist.common.media import SAMPLE_RATE, MediaError, audio_from_video, encode_utterance, read_wav
from m2fdist.common.modalities import NAME_OF
from m2fdist.data.decode import sample_frames
from m2fdist.faces.faceset import FaceSet
from m2fdist.format.exports import PACKING_KEYS
from m2fdist.models.device import device_of
from m2fdist.pack.writer import PackOptions
from m2fdist.raw.base import Utterance


@dataclass(frozen=True)
class Preparation:
    """How a clip is prepared for the extractors: exactly as packing prepared the clips the model was trained and
    scored on (``m2fdist pack``'s options, which the audio and visual exports carry), then decoded as the
    training loader decodes a shard's members."""
    # pack's own defaults: exports from before they carried the options were packed with them
    max_side: int = PackOptions.max_side
    max_seconds: float = PackOptions.max_seconds
    long_clips: str = PackOptions.long_clips
    audio_seconds: float = 0.0  # the audio model's input length (audio.seconds)
    num_frames: int = 0  # frames sampled per clip (data.num_frames of the visual run)
    frame_size: tuple[int, int] | None = None  # data.frame_width / frame_height of the visual run, None: as packed
    max_clip_mpixels: float = 4000.0  # the visual run's data.max_clip_mpixels


@dataclass
class Decoded:
    """One utterance's media as the extractors take it, and what was left out of it."""
    wave: torch.Tensor | None
    frames: torch.Tensor | None
    note: str | None = None  # e.g. "audio: used the first 8 s of 12.4 s"


def preparation(parts: dict[str, Any], metas: dict[str, dict[str, Any]]) -> Preparation:
    """A bundle's :class:`Preparation`, from its audio and visual exports' run configs and packing options."""
    needs = needs_of(parts)
    kw: dict[str, Any] = {}
    for part in ("audio", "visual"):
        packing = metas.get(part, {}).get("packing") or {}
        kw.update((k, packing[k]) for k in PACKING_KEYS if k in packing)
    if "A" in needs:
        kw["audio_seconds"] = parts["audio"][0].audio.seconds
    if "V" in needs:
        d = parts["visual"][0].data
        kw.update(num_frames=d.num_frames, max_clip_mpixels=d.max_clip_mpixels,
                  frame_size=(d.frame_width, d.frame_height) if d.frame_width and d.frame_height else None)
    return Preparation(**kw)


def decode_utterance(u: Utterance, prep: Preparation, needs: str = "AV") -> Decoded:
    """Decode what the model reads of an utterance: the clip (or its span of a longer video, with the sound of
    ``u.audio`` when given) re-encoded as packing encodes it — H.264 with the longer side at most ``max_side``,
    16 kHz mono WAV, cut at ``max_seconds`` — then its sound (capped at the audio model's length) when ``needs``
    has A and its sampled frames when it has V, decoded as the training loader decodes a shard's members.

    So a raw clip gives the model what its packed copy gave it in training and in the report, and a clip of any
    size costs what a packed one costs: ffmpeg scales it down frame by frame before anything is held. Raises
    MediaError for media that cannot be read: the caller records a skip.
    """
    if not u.video:  # a sound file alone (a model that reads audio only): decoded as a loader of it would
        samples = audio_from_video(Path(u.audio), max_seconds=prep.audio_seconds)
        if len(samples) == 0:
            raise MediaError("no audio decoded")
        return Decoded(torch.from_numpy(samples), None)
    with tempfile.TemporaryDirectory(prefix="m2fdist-predict-") as tmp:
        mp4, wav = Path(tmp) / "u.mp4", Path(tmp) / "u.wav"
        enc = encode_utterance(Path(u.video), mp4, wav, max_side=prep.max_side, max_seconds=prep.max_seconds,
                               start=u.cut_start, end=u.cut_end, audio=Path(u.audio) if u.audio else None)
        if enc.trimmed and prep.long_clips == "skip":
            raise MediaError(f"clip is longer than the {prep.max_seconds:g} s its model's shards were packed with")
        notes = [f"video: used the first {prep.max_seconds:g} s of {enc.source_duration:.1f} s"] if enc.trimmed else []
        wave = frames = None
        if "A" in needs:
            samples = read_wav(wav.read_bytes())[0]
            if len(samples) == 0:
                raise MediaError("no audio decoded")
            seconds = len(samples) / SAMPLE_RATE
            if seconds > prep.audio_seconds + 0.05:  # the audio model reads its first audio.seconds, as in training
                notes.append(f"audio: used the first {prep.audio_seconds:g} s of {seconds:.1f} s")
            wave = torch.from_numpy(samples.copy())
        if "V" in needs:
            frames = torch.from_numpy(sample_frames(mp4.read_bytes(), prep.num_frames, prep.frame_size,
                                                    prep.max_clip_mpixels))
    return Decoded(wave, frames, "; ".join(notes) or None)


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
                found = visual.detector.scored_clips(clips, device)
                boxes = [[b[p >= visual.config.min_face_prob].to(device) for b, p in clip] for clip in found]
        feats["visual"] = visual(frames, hw, boxes)
    return feats


def needs_of(parts: dict[str, Any]) -> str:
    """What a bundle reads besides text: "AV", "A", "V" or "" (text-only models, fusion over T alone)."""
    if "fusion" not in parts:
        return ""
    return "".join(m for m in "AV" if m in parts["fusion"][0].fusion.modalities)


def _failure(e: BaseException) -> str:
    """A per-utterance failure as a skip reason: MediaError's own words, anything else named by its type."""
    if isinstance(e, MediaError):
        return e.reason
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else 'no message'}"


def _features(parts: dict[str, Any], ok: list, decoded: list[Decoded], needs: str,
              faces: FaceSet | None) -> dict[str, Tensor]:
    """A chunk's features (fusion bundles) or logits (text-only bundles)."""
    if "fusion" in parts:
        return utterance_features(parts, ok, decoded, needs, faces)
    text = parts["text"][1]  # text only: the text model's own head
    return {"logits": text(**text.tokenize_metas(_metas(ok)))}


def _chunk(parts: dict[str, Any], chunk: list, prep: Preparation, faces: FaceSet | None,
           reasons: dict[str, str]) -> tuple[list, list[Decoded], dict[str, Tensor] | None]:
    """(utterances kept, their decoded media, their features) for a few utterances; each that fails — to decode,
    or in the extractors (a clip the face detector cannot take, memory) — is a skip with its reason, so one bad
    input costs its own row only."""
    needs = needs_of(parts)
    ok, decoded = [], []
    for u in chunk:
        try:
            decoded.append(decode_utterance(u, prep, needs) if needs else Decoded(None, None))
            ok.append(u)
        except Exception as e:  # noqa: BLE001 (any failure of one input is that input's skip, never the run's)
            reasons[u.key] = _failure(e)
    if not ok:
        return ok, decoded, None
    try:
        return ok, decoded, _features(parts, ok, decoded, needs, faces)
    except Exception:  # noqa: BLE001 (find the utterance at fault: each alone)
        pass
    kept, kept_decoded, feats = [], [], []
    for u, d in zip(ok, decoded, strict=True):
        try:
            feats.append(_features(parts, [u], [d], needs, faces))
            kept.append(u)
            kept_decoded.append(d)
        except Exception as e:  # noqa: BLE001
            reasons[u.key] = _failure(e)
    if not kept:
        return kept, kept_decoded, None
    return kept, kept_decoded, {name: torch.cat([f[name] for f in feats]) for name in feats[0]}


@torch.no_grad()
def predict_dialog(parts: dict[str, Any], utterances: list, chunk: int = 16, faces: FaceSet | None = None,
                   on_utterance: Any = None, prep: Preparation | None = None,
                   ) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, str]]:
    """(probabilities [C] by key, skip reasons by key, notes by key) for one dialog's utterances.

    Media are prepared as packing prepared them (``prep``, :func:`preparation`) and run through the extractors
    ``chunk`` utterances at a time, so memory does not grow with the dialog's length; only the dialog's feature
    rows go to the fusion model together. An utterance that fails is a skip; the dialog's other utterances
    are still predicted. A text-only bundle's text classifier scores each utterance (with its neighbours'
    text) directly.
    """
    prep = prep or Preparation()
    parts_cfg = parts["fusion"][0] if "fusion" in parts else parts["text"][0]
    feats_parts, good, reasons, notes = [], [], {}, {}
    for i in range(0, len(utterances), chunk):
        ok, decoded, feats = _chunk(parts, utterances[i : i + chunk], prep, faces, reasons)
        if feats is not None:
            feats_parts.append(feats)
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
