"""ffmpeg and WAV helpers shared by packing, synthesis and the raw-tree loader.

ffmpeg comes from the ``imageio-ffmpeg`` wheel (a static build with libx264 and AAC), so no system
package is needed. Every call is a subprocess with its stderr kept, so a bad clip becomes a one-line
reason ("moov atom not found") instead of a crash deep in a decoder.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import wave
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import imageio_ffmpeg
import numpy as np

SAMPLE_RATE = 16_000


class MediaError(RuntimeError):
    """A clip that cannot be read or converted; ``reason`` is short enough for index.json."""
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@cache
def ffmpeg_exe() -> str:

    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_timeout() -> float:
    """Seconds any one ffmpeg call may take (``M2FDIST_FFMPEG_TIMEOUT``, default 600) before it counts as hung."""
    return float(os.environ.get("M2FDIST_FFMPEG_TIMEOUT", 600))


def run_ffmpeg(cmd: list[str], text: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run one ffmpeg command with a time limit: a hung decode becomes a MediaError, not a stuck worker."""
    limit = ffmpeg_timeout() if timeout is None else timeout
    try:
        return subprocess.run(cmd, capture_output=True, text=text, timeout=limit)
    except subprocess.TimeoutExpired:
        raise MediaError(f"ffmpeg timed out after {limit:g}s") from None


_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")


def _stderr_reason(stderr: str) -> str:
    """The most telling line of an ffmpeg failure, without paths or banners."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for key in ("moov atom not found", "Invalid data found", "No such file", "does not contain any stream"):
        for ln in lines:
            if key in ln:
                return key if key != "Invalid data found" else "invalid data found when processing input"
    return lines[-1][-200:] if lines else "ffmpeg failed"


def probe(path: str | Path) -> tuple[float | None, bool, bool]:
    """(duration in seconds, has video, has audio) of a media file, read from ffmpeg's header dump."""
    err = run_ffmpeg([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)]).stderr
    if "Stream #" not in err:
        raise MediaError(_stderr_reason(err))
    m = _DURATION.search(err)
    duration = None
    if m:
        h, mnt, s = m.groups()
        duration = int(h) * 3600 + int(mnt) * 60 + float(s)
    return duration, " Video: " in err, " Audio: " in err


@dataclass
class Encoded:
    """What :func:`encode_utterance` produced and what it noticed about the source."""
    source_duration: float | None
    trimmed: bool


def even(n: float) -> int:
    return max(2, int(round(n / 2)) * 2)


def video_kbps(max_side: int) -> int:
    """Bit-rate ceiling of packed video: it lets shard planning bound a shard's bytes before encoding."""
    return max(150, int(400 * (max_side / 320) ** 2))


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) with the longer side at most ``max_side``, aspect kept, both even (H.264 needs it)."""
    scale = min(1.0, max_side / max(width, height))
    return even(width * scale), even(height * scale)


def encode_utterance(
    video: Path,
    out_mp4: Path,
    out_wav: Path,
    *,
    max_side: int,
    max_seconds: float,
    start: float | None = None,
    end: float | None = None,
    audio: Path | None = None,
    threads: int = 1,
) -> Encoded:
    """Re-encode one utterance's clip to H.264 (longer side <= max_side) and 16 kHz mono PCM WAV.

    ``start``/``end`` cut a span out of a longer video (IEMOCAP turns inside a dialog's avi). ``audio``
    takes the WAV from a separate file (IEMOCAP's sentence wavs) instead of the clip's own track.
    Clips longer than ``max_seconds`` are cut to that length; the caller decides whether that is a
    trim or a skip from ``source_duration``.
    """
    duration, has_video, has_audio = probe(video)
    if not has_video:
        raise MediaError("no video stream")
    if audio is None and not has_audio:
        raise MediaError("no audio stream")
    span = duration
    if start is not None and end is not None:
        span = end - start
        if span <= 0:
            raise MediaError(f"empty time span {start:.3f}-{end:.3f}")
        if duration is not None and start >= duration:
            raise MediaError(f"time span starts at {start:.3f}s, after the video's end ({duration:.3f}s)")
    trimmed = span is not None and span > max_seconds
    length = min(span, max_seconds) if span is not None else max_seconds
    # A container that declares no duration may hold anything: cut at max_seconds and tell from the output.
    unknown = span is None
    vf = (
        f"scale='if(gt(iw,ih),min({max_side},iw),-2)':'if(gt(iw,ih),-2,min({max_side},ih))'"
        ",scale=trunc(iw/2)*2:trunc(ih/2)*2,setsar=1"
    )
    # Cut only when asked to (a span, or a trim): the container's rounded duration would clip the audio.
    cut = ["-t", f"{length:.3f}"] if (start is not None or trimmed or unknown) else []
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
    if start is not None:
        cmd += ["-ss", f"{start:.3f}"]
    cmd += [*cut, "-i", str(video)]
    if audio is not None:  # a turn's own wav: kept whole unless it runs past max_seconds
        cmd += [*(["-t", f"{max_seconds:.3f}"] if trimmed else []), "-i", str(audio)]
    cmd += ["-threads", str(threads)]
    kbps = video_kbps(max_side)
    cmd += ["-map", "0:v:0", "-an", "-vf", vf, "-c:v", "libx264", "-preset", "veryfast", "-crf", "23"]
    cmd += ["-maxrate", f"{kbps}k", "-bufsize", f"{2 * kbps}k"]
    cmd += ["-pix_fmt", "yuv420p", "-movflags", "+faststart", "-f", "mp4", str(out_mp4)]
    cmd += ["-map", "1:a:0" if audio is not None else "0:a:0", "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE)]
    cmd += ["-c:a", "pcm_s16le", "-f", "wav", "-bitexact", str(out_wav)]
    proc = run_ffmpeg(cmd)
    if proc.returncode != 0:
        raise MediaError(_stderr_reason(proc.stderr))
    if not out_mp4.exists() or out_mp4.stat().st_size == 0:
        raise MediaError("no frames decoded")
    if unknown:  # as long as the cap: the source went on past it (or ended right there)
        with wave.open(str(out_wav)) as w:
            trimmed = w.getnframes() >= int((max_seconds - 0.05) * w.getframerate())
    return Encoded(source_duration=span, trimmed=trimmed)


def audio_from_video(path: Path, max_seconds: float | None = None) -> np.ndarray:
    """A clip's soundtrack as float32 mono at 16 kHz: what a loader of the raw tree has to do."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path)]
    if max_seconds is not None:
        cmd += ["-t", f"{max_seconds:.3f}"]
    cmd += ["-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-c:a", "pcm_s16le", "-f", "wav", "-bitexact", "-"]
    proc = run_ffmpeg(cmd, text=False)
    if proc.returncode != 0:
        raise MediaError(_stderr_reason(proc.stderr.decode(errors="replace")))
    return read_wav(proc.stdout)[0]


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Decode 16-bit PCM WAV bytes to float32 in [-1, 1] (mono: channels are averaged)."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            if w.getsampwidth() != 2:
                raise MediaError(f"expected 16-bit PCM, got {8 * w.getsampwidth()}-bit")
            rate, channels = w.getframerate(), w.getnchannels()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise MediaError(f"not a PCM WAV file: {e}") from e
    pcm = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1)
    return pcm, rate


def write_wav(path: Path | io.BytesIO, samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Write int16 samples ([n] mono or [n, channels]) as PCM WAV."""
    samples = np.asarray(samples)
    if samples.dtype != np.int16:
        samples = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    with wave.open(str(path) if isinstance(path, Path) else path, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
