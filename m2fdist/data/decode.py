"""Turn a shard sample's raw bytes into arrays, reading only the members m2fdist writes.

Shards may come from anyone, so nothing here calls pickle or torch.load: ``.json`` goes through
``json.loads``, ``.mp4`` through decord, ``.wav`` through the stdlib ``wave`` module. Any other member
(``.pyd``, ``.pth``, ...) is never decoded; it is dropped with a warning naming the extension. What a
sample may cost is bounded (:class:`~m2fdist.format.source.ReadPolicy`): a clip's frames × resolution and a
WAV's length are checked from their headers before the bulk of the decoding, and ``label_id`` must be an
integer label of the dataset.
"""

from __future__ import annotations

import io
import json
import warnings
import wave
from pathlib import Path
from typing import Any

import numpy as np
import torch  # noqa: F401  (torch must load before decord: decord2 preloads CUDA libs that break CPU convs)
from torch.utils.dlpack import from_dlpack

from m2fdist.common.media import SAMPLE_RATE, MediaError, read_wav
from m2fdist.common.modalities import known_members
from m2fdist.format.source import ReadPolicy

NUM_FRAMES = 15
KNOWN_MEMBERS = known_members()
_warned: set[str] = set()


class ShardDecodeError(RuntimeError):
    """A sample that cannot be decoded; the message names the shard and key."""


def sample_frames(video: bytes | str | Path, num_frames: int = NUM_FRAMES,
                  size: tuple[int, int] | None = None, max_mpixels: float | None = None) -> np.ndarray:
    """``num_frames`` frames spread uniformly over the clip, as uint8 [T, H, W, 3].

    Clips shorter than ``num_frames`` repeat frames, so every sample has the same T. ``size`` is
    (width, height) for decord to resize to; None keeps the clip's own size. ``max_mpixels`` caps the
    clip's frame count × its decoded resolution (millions), checked on the first frame before the rest
    (sampling frames across a clip decodes about all of them).
    """
    # here, not at the top: decord after torch (decord2's CUDA preloads break CPU convs), and only to decode
    import decord

    source = io.BytesIO(video) if isinstance(video, bytes) else str(video)
    kwargs = {"width": size[0], "height": size[1]} if size else {}
    try:
        reader = decord.VideoReader(source, ctx=decord.cpu(0), num_threads=1, **kwargs)
        n = len(reader)
        if n == 0:
            raise MediaError("video has no frames")
        idx = np.linspace(0, n - 1, num_frames).round().astype(int)
        if max_mpixels is not None:  # the container's declared size before decoding, the real one after
            _check_clip(n, mp4_size(video) if isinstance(video, bytes) else None, max_mpixels)
        # through DLPack: a view of decord's buffer, not asnumpy()'s copy (20% of a 320 px clip's decode time)
        frames = from_dlpack(reader.get_batch(idx.tolist()).to_dlpack()).numpy()
        if max_mpixels is not None and size is None:
            _check_clip(n, (frames.shape[2], frames.shape[1]), max_mpixels)
    except (MediaError, ShardDecodeError):
        raise
    except (decord.DECORDError, RuntimeError) as e:  # decord raises plain RuntimeErrors for some files too
        raise MediaError(f"decord could not read the video: {str(e).splitlines()[0][:200]}") from e
    return frames


def _check_clip(n: int, size: tuple[int, int] | None, max_mpixels: float) -> None:
    if size is not None and n * size[0] * size[1] > max_mpixels * 1e6:
        raise MediaError(f"clip is {n} frames of {size[0]}x{size[1]} ({n * size[0] * size[1] / 1e6:.0f} Mpx), "
                         f"past data.max_clip_mpixels={max_mpixels:g}")


def mp4_size(data: bytes) -> tuple[int, int] | None:
    """The largest track size (width, height) an mp4 declares in its ``tkhd`` boxes, without decoding;
    None when the boxes cannot be walked. Used to refuse a huge clip before decord decodes it."""
    def boxes(start: int, end: int):
        while start + 8 <= end:
            size = int.from_bytes(data[start:start + 4], "big")
            kind = data[start + 4:start + 8]
            head = 8
            if size == 1 and start + 16 <= end:
                size, head = int.from_bytes(data[start + 8:start + 16], "big"), 16
            elif size == 0:
                size = end - start
            if size < head or start + size > end:
                return
            yield kind, start + head, start + size
            start += size

    best = None
    for kind, body, end in boxes(0, len(data)):
        if kind != b"moov":
            continue
        for trak, tbody, tend in boxes(body, end):
            if trak != b"trak":
                continue
            for tkhd, _, hend in boxes(tbody, tend):
                if tkhd == b"tkhd" and hend - 8 >= tbody:
                    w = int.from_bytes(data[hend - 8:hend - 4], "big") >> 16
                    h = int.from_bytes(data[hend - 4:hend], "big") >> 16
                    if best is None or w * h > best[0] * best[1]:
                        best = (w, h)
    return best


def load_json_member(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """The sample's ``.json`` member as a dict, or a ShardDecodeError naming the sample."""
    try:
        meta = json.loads(raw["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardDecodeError(f"{where}: .json member is not UTF-8 JSON ({e})") from e
    if not isinstance(meta, dict):
        raise ShardDecodeError(f"{where}: .json member is not a JSON object")
    return meta


def wav_seconds(data: bytes) -> float:
    """A WAV member's length from its header (nothing decoded)."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            return w.getnframes() / max(1, w.getframerate())
    except (wave.Error, EOFError) as e:
        raise MediaError(f"not a PCM WAV file: {e}") from e


def check_label(meta: dict[str, Any], num_labels: int | None, where: str) -> None:
    """``label_id`` is an integer label of the dataset (bools and floats are not)."""
    label = meta.get("label_id")
    if label is None and "label_id" not in meta:
        raise ShardDecodeError(f"{where}: .json member is not an m2fdist sample (no label_id)")
    if not isinstance(label, int) or isinstance(label, bool) or label < 0 or \
            (num_labels is not None and label >= num_labels):
        span = f"0..{num_labels - 1}" if num_labels else "an integer >= 0"
        raise ShardDecodeError(f"{where}: label_id {label!r} is not a label of this dataset ({span})")


def decode_sample(raw: dict[str, Any], num_frames: int = NUM_FRAMES, frame_size: tuple[int, int] | None = None,
                  members: tuple[str, ...] = ("json", "mp4", "wav"), num_labels: int | None = None,
                  policy: ReadPolicy | None = None) -> dict[str, Any]:
    """Raw WebDataset sample (``__key__``, ``__url__``, member bytes) → meta, frames and waveform.

    Only ``members`` are decoded (json always): the text stage never pays for video decoding.
    """
    policy = policy or ReadPolicy()
    key, url = raw.get("__key__", "?"), raw.get("__url__", "?")
    where = f"{url}:{key}"
    for ext in raw:
        if not ext.startswith("__") and ext not in KNOWN_MEMBERS and ext not in _warned:
            _warned.add(ext)
            warnings.warn(f"{where}: ignoring shard member .{ext} (m2fdist never decodes unknown members)",
                          stacklevel=2)
    missing = ({"json"} | set(members)) - raw.keys()
    if missing:
        raise ShardDecodeError(f"{where}: sample lacks .{', .'.join(sorted(missing))}")
    meta = load_json_member(raw, where)
    check_label(meta, num_labels, where)
    if not isinstance(meta.get("text", ""), str):
        raise ShardDecodeError(f"{where}: .json member's text is not a string")
    out: dict[str, Any] = {"key": key, "meta": meta}
    try:
        if "mp4" in members:
            out["frames"] = sample_frames(raw["mp4"], num_frames, frame_size, policy.max_clip_mpixels)
        if "wav" in members:
            seconds = wav_seconds(raw["wav"])
            if seconds > policy.max_audio_seconds:
                raise MediaError(f".wav is {seconds:.1f} s long, past data.max_audio_seconds="
                                 f"{policy.max_audio_seconds:g}")
            out["audio"], rate = read_wav(raw["wav"])
            if rate != SAMPLE_RATE:
                raise MediaError(f".wav is {rate} Hz, shards hold {SAMPLE_RATE} Hz")
    except MediaError as e:
        raise ShardDecodeError(f"{where}: {e.reason}") from e
    return out
