"""Frames, voices and ffmpeg encoding for the synthetic corpora.

Frames are drawn with numpy (a flat scene colour plus one pre-blended face patch that drifts a few
pixels per frame) and piped to ffmpeg as raw rgb24, so a 2 s 320x180 clip costs a fraction of a second
and memory stays flat even for the 100 s "wrongly cut" clips. Audio goes through a temporary WAV.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from m2fdist.common.media import SAMPLE_RATE, MediaError, ffmpeg_exe, write_wav
from m2fdist.synth.cues import Look, Voice

# Crop of skimage.data.astronaut() around her face. MTCNN finds the face at (181, 62)-(268, 172), so
# the face fills ~61% of the crop's height; tests check that MTCNN still finds it after rendering.
FACE_BOX = (149, 27, 299, 207)  # left, top, right, bottom


@cache
def face_crop() -> np.ndarray:
    """The astronaut's face crop, float32 RGB in [0, 255] (bundled with scikit-image, no download)."""
    # here, not at the top: scikit-image only for the synthetic corpus's face images
    from skimage import data

    left, top, right, bottom = FACE_BOX
    return data.astronaut()[top:bottom, left:right].astype(np.float32)


def face_patch(look: Look, frame_h: int) -> np.ndarray:
    """The face resized to the look's size, tinted, and blended into the scene colour with a soft oval.

    Blending once per look (the scene is flat) keeps the per-frame work to a single array copy.
    """
    crop = face_crop()
    ph = max(8, int(round(look.scale * frame_h)))
    pw = max(8, int(round(ph * crop.shape[1] / crop.shape[0])))
    img = Image.fromarray(crop.astype(np.uint8)).resize((pw, ph), Image.BILINEAR)
    face = np.asarray(img, dtype=np.float32) * np.array(look.tint, dtype=np.float32) * look.brightness
    yy, xx = np.mgrid[0:ph, 0:pw].astype(np.float32)
    r = np.sqrt(((xx + 0.5) / pw - 0.5) ** 2 / 0.25 + ((yy + 0.5) / ph - 0.5) ** 2 / 0.25)
    alpha = np.clip((1.0 - r) / 0.12, 0.0, 1.0)[..., None]  # 1 inside the oval, soft 12% rim
    scene = np.array(look.scene, dtype=np.float32)
    return np.clip(alpha * face + (1.0 - alpha) * scene, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Segment:
    """A time span of a video showing one look (one utterance, or a gap between turns)."""
    t0: float
    t1: float
    look: Look


def paint(
    segments: Sequence[Segment], n_frames: int, size: tuple[int, int], fps: int, seed: int
) -> Iterator[np.ndarray]:
    """Yield ``n_frames`` rgb24 frames; frame i shows the segment that holds time i/fps (else the last).

    The face drifts on slow sines with random phases, so consecutive frames differ like real video.
    The scene is flat, so a frame only repaints the rectangle the face left; the same buffer is yielded
    every time (consume it before asking for the next frame).
    """
    w, h = size
    rng = np.random.default_rng(seed)
    phases = rng.uniform(0, 2 * np.pi, size=(len(segments), 2))
    patch = np.empty((0, 0, 3), dtype=np.uint8)
    frame = np.empty((h, w, 3), dtype=np.uint8)
    k, shown, dirty = 0, -1, (0, 0, 0, 0)
    for i in range(n_frames):
        t = i / fps
        while k + 1 < len(segments) and t >= segments[k].t1:
            k += 1
        seg = segments[k]
        fx0, fy0, fx1, fy1 = dirty
        if k != shown:  # a new look: repaint the whole scene; otherwise only where the face was
            patch = face_patch(seg.look, h)
            fx0, fy0, fx1, fy1 = 0, 0, w, h
            shown = k
        frame[fy0:fy1, fx0:fx1] = seg.look.scene
        ph, pw = patch.shape[:2]
        cx = seg.look.x * w + 0.02 * w * np.sin(2 * np.pi * 0.4 * t + phases[k, 0])
        cy = 0.5 * h + 0.015 * h * np.sin(2 * np.pi * 0.3 * t + phases[k, 1])
        x0, y0 = int(round(cx - pw / 2)), int(round(cy - ph / 2))
        fx0, fy0, fx1, fy1 = max(0, x0), max(0, y0), min(w, x0 + pw), min(h, y0 + ph)
        if fx1 > fx0 and fy1 > fy0:
            frame[fy0:fy1, fx0:fx1] = patch[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
        dirty = (fx0, fy0, fx1, fy1)
        yield frame


_HARMONICS = np.array([1.0, 0.5, 0.3, 0.2], dtype=np.float32)


def voice(v: Voice, duration: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A float32 "utterance": harmonic tone bursts (syllables) at the voice's pitch, loudness and rate.

    Pitch, energy and syllable rate are what a mel-spectrogram CNN can pick up, which is all the audio
    extractor needs to learn from; mild noise keeps silent stretches from being exactly zero.
    """
    n = int(round(duration * sr))
    out = rng.normal(0.0, 0.004, n).astype(np.float32)
    t = float(rng.uniform(0.02, 0.15))
    while t < duration - 0.06:
        syl = min(float(rng.uniform(0.5, 0.8)) / v.rate, duration - t - 0.01)
        i0, m = int(t * sr), int(syl * sr)
        ts = np.arange(m, dtype=np.float32) / sr
        f = v.f0 * (1.0 + v.slope * (t + ts)) * (1.0 + 0.03 * np.sin(2 * np.pi * 5.0 * ts))
        phase = 2 * np.pi * np.cumsum(f, dtype=np.float64).astype(np.float32) / sr
        tone = sum(a * np.sin((j + 1) * phase) for j, a in enumerate(_HARMONICS)) / _HARMONICS.sum()
        env = np.minimum(1.0, ts / 0.015) * np.exp(-ts / max(0.6 * syl, 1e-3))
        out[i0 : i0 + m] += (v.amp * float(rng.uniform(0.8, 1.0))) * env * tone
        gap = 1.0 / v.rate - syl + float(rng.uniform(0.0, 0.3)) / v.rate
        if rng.random() < 0.1:  # a pause between words
            gap += float(rng.uniform(0.1, 0.25))
        t += syl + max(0.01, gap)
    return np.clip(out, -1.0, 1.0)


def encode(
    path: Path,
    frames: Iterable[np.ndarray],
    audio: np.ndarray,
    size: tuple[int, int],
    fps: int,
    duration: float,
    fmt: str = "mp4",
    faststart: bool = True,
    threads: int = 0,
) -> None:
    """Encode piped frames plus 16 kHz mono ``audio`` as MELD's mp4 (H.264 + AAC 48 kHz stereo) or
    IEMOCAP's avi (DivX mpeg4 + 16 kHz PCM). ``faststart=False`` leaves the moov atom at the end, which
    is how the planted corrupt clip loses it when truncated."""
    w, h = size
    fd, wav = tempfile.mkstemp(suffix=".wav", prefix="m2fsynth_")
    os.close(fd)
    try:
        write_wav(Path(wav), audio, SAMPLE_RATE)
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
        cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "pipe:0"]
        cmd += ["-i", wav, "-map", "0:v:0", "-map", "1:a:0", "-threads", str(threads)]
        if fmt == "mp4":
            cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "23", "-pix_fmt", "yuv420p"]
            cmd += ["-c:a", "aac", "-b:a", "96k", "-ar", "48000", "-ac", "2"]
            if faststart:
                cmd += ["-movflags", "+faststart"]
        elif fmt == "avi":
            cmd += ["-c:v", "mpeg4", "-vtag", "DIVX", "-q:v", "4", "-pix_fmt", "yuv420p"]
            cmd += ["-c:a", "pcm_s16le", "-ar", str(SAMPLE_RATE), "-ac", "1"]
        else:
            raise ValueError(f"unknown container {fmt!r}")
        cmd += ["-t", f"{duration:.3f}", "-f", fmt, str(path)]
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=err)
            assert proc.stdin is not None
            try:
                for frame in frames:
                    proc.stdin.write(np.ascontiguousarray(frame).data)
                proc.stdin.close()
            except BrokenPipeError:
                pass
            rc = proc.wait()
            if rc != 0:
                err.seek(0)
                msg = err.read().decode(errors="replace").strip().splitlines()
                raise MediaError(f"ffmpeg failed on {path.name}: {msg[-1] if msg else rc}")
    finally:
        os.unlink(wav)


def run_jobs(
    fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int, progress: bool, desc: str
) -> list[Any]:
    """Run ``fn`` over ``jobs`` in order (workers <= 1) or in a spawn Pool, with a tqdm bar.

    Spawn rather than fork: callers may already hold torch threads, which fork does not survive well.
    """
    # here, not at the top: tqdm's auto backend only for the renderer's own progress
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc=desc, unit="clip", disable=not progress)
    results: list[Any] = []
    try:
        if workers <= 1:
            for job in jobs:
                results.append(fn(job))
                bar.update(1)
        else:
            with mp.get_context("spawn").Pool(workers) as pool:
                for r in pool.imap_unordered(fn, jobs, chunksize=1):
                    results.append(r)
                    bar.update(1)
    finally:
        bar.close()
    return results
