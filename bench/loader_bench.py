"""Loader benchmark: the loader's rate per worker against the decode floor, and shards over HTTP vs disk.

- decode floor: the pure decode of each packed utterance in one process (one core): its 15 frames with
  decord and its WAV, from bytes already in memory; no tar reading, no checks, no batching, no IPC. Two
  variants: decord's usual ``asnumpy()`` (a copy) and the DLPack view the loader uses (the lower floor).
- loader: ``make_loader`` over the same split (evaluation order, batch 8), with 0 workers (in-process) and
  with 1, 2 worker processes; "per worker" divides by the processes that decode. On a shared machine wall
  rates are noisy, so the CPU time the decoding processes spent per utterance is reported too (the
  workers' from /proc) and compared with the floor's. Loader figures are steady state: timing starts at
  the first batch, so worker start-up is left out.
- HTTP: the same loader over a local HTTP server (``http.server`` on 127.0.0.1, in a thread of this
  process) serving the shards folder, against the folder read from disk.

Prints a markdown table. Without ``--shards`` it synthesises a MELD-layout corpus (``--dialogs``, 1280x720
clips) and packs it at ``--max-side`` first:

    .venv/bin/python bench/loader_bench.py [--shards SHARDS] [--split train] [--workers 0,1,2] [--repeat 2]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import io
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from m2fdist.common.media import read_wav
from m2fdist.data import LoaderConfig, make_loader, sample_frames
from m2fdist.data.stream import read_samples
from m2fdist.format.index import load_index
from m2fdist.format.source import ShardSource
from m2fdist.pack import PackOptions, pack
from m2fdist.synth import synth_meld


def _frames_asnumpy(mp4: bytes) -> np.ndarray:
    """decord's everyday path: get_batch(...).asnumpy(), a copy of decord's buffer."""
    import decord

    reader = decord.VideoReader(io.BytesIO(mp4), ctx=decord.cpu(0), num_threads=1)
    idx = np.linspace(0, len(reader) - 1, 15).round().astype(int)
    return reader.get_batch(idx.tolist()).asnumpy()


def decode_floor(shards: Path, split: str, repeat: int) -> dict[str, tuple[float, float]]:
    """Pure decoding (15 frames + WAV) on one core, per variant: best utt/s (wall), best CPU ms/utt."""
    torch.set_num_threads(1)
    source = ShardSource(shards)
    names = [s["url"] for s in load_index(source)["splits"][split]["shards"]]
    samples = [(s["mp4"], s["wav"]) for s in read_samples(source, names)]
    variants = {"decord asnumpy()": _frames_asnumpy, "DLPack view, as the loader": lambda v: sample_frames(v, 15)}
    out = {}
    for name, frames in variants.items():
        rate, cpu = 0.0, float("inf")
        for _ in range(repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            for mp4, wav in samples:
                frames(mp4)
                read_wav(wav)
            rate = max(rate, len(samples) / (time.perf_counter() - t0))
            cpu = min(cpu, (time.process_time() - c0) * 1000 / len(samples))
        out[f"decode floor, {name} ({len(samples)} utt, one core)"] = (rate, cpu)
    return out


def _cpu_seconds(pid: int, last: float) -> float:
    """utime + stime of a live process and of its reaped children (ffmpeg); ``last`` once it has exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return last
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def measure(loader, count) -> tuple[float, float, float]:
    """Steady-state wall rate (units/s), CPU ms per unit of the processes that decode (the workers; the
    main process when there are none), and of the main process (which, with workers, takes each batch out
    of shared memory). Timing starts at the first batch, so worker start-up and the first batch are left
    out."""
    it = iter(loader)
    inner = getattr(it, "inner", it)  # m2fdist.data.handoff wraps torch's iterator
    pids = [w.pid for w in getattr(inner, "_workers", [])]  # a private attribute: fine for a benchmark
    next(it)
    t0, c0 = time.perf_counter(), time.process_time()
    start = {p: _cpu_seconds(p, 0.0) for p in pids}
    seen = dict(start)
    n = 0
    for batch in it:
        n += count(batch)
        seen = {p: _cpu_seconds(p, t) for p, t in seen.items()}
    main = time.process_time() - c0
    used = sum(seen[p] - start[p] for p in pids) if pids else main
    return n / (time.perf_counter() - t0), used * 1000 / n, main * 1000 / n


FALLBACKS = [0]  # batches that found no free hand-off slot, over every loader run


def loader_rate(shards: str, split: str, workers: int, repeat: int) -> tuple[float, float, float]:
    """make_loader (evaluation order, batch 8): best valid utt/s, best CPU ms per utterance of the decoding
    processes and of the main process."""
    runs = []
    for _ in range(repeat):
        loader = make_loader(shards, split, LoaderConfig(batch_size=8, num_workers=workers, train=False),
                             rank=0, world_size=1)
        runs.append(measure(loader, lambda b: int(b["valid"].sum())))
        FALLBACKS[0] += loader.handoff.fallbacks if loader.handoff else 0
    return max(r for r, _, _ in runs), min(c for _, c, _ in runs), min(m for _, _, m in runs)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the stdlib's name)
        pass


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=Path, default=None, help="a packed shards folder (default: build one)")
    p.add_argument("--dialogs", type=int, default=24, help="without --shards: dialogs to synthesise")
    p.add_argument("--max-side", type=int, default=320, help="without --shards: pack at this size")
    p.add_argument("--split", default="train")
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--repeat", type=int, default=2, help="runs per cell; the best is reported")
    args = p.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    work = None
    if args.shards is None:
        work = Path(tempfile.mkdtemp(prefix="m2fdist-loader-bench-"))
        synth_meld(work / "MELD.Raw", args.dialogs, seed=0, size=(1280, 720), workers=2, progress=False)
        args.shards = work / "shards"
        pack("meld", work / "MELD.Raw", args.shards, workers=2, options=PackOptions(max_side=args.max_side),
             progress=False)
    index = load_index(args.shards)
    print(f"{cpu_name()}; {args.shards} split {args.split}, --max-side {index['options']['max_side']}\n")
    floors = decode_floor(args.shards, args.split, args.repeat)
    floor_cpu = min(cpu for _, cpu in floors.values())
    print("| reader | loader workers | utt/s | utt/s per decoding process | CPU ms/utt in decoding processes "
          "| CPU vs the lowest floor | CPU ms/utt in the main process |")
    print("|---|---|---|---|---|---|---|")
    for name, (rate, cpu) in floors.items():
        print(f"| {name} | - | {rate:.1f} | {rate:.1f} | {cpu:.2f} | {cpu / floor_cpu:.2f}× | {cpu:.2f} |")
    server, url = serve(args.shards)
    try:
        for name, location in (("disk", str(args.shards)), ("HTTP 127.0.0.1", url)):
            for w in workers:
                r, cpu, main = loader_rate(location, args.split, w, args.repeat)
                print(f"| loader, {name} | {w} | {r:.1f} | {r / max(1, w):.1f} | {cpu:.2f} | {cpu / floor_cpu:.2f}× "
                      f"| {main:.2f} |")
    finally:
        server.shutdown()
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nbest of {args.repeat} runs per row; batches that found no free hand-off slot: {FALLBACKS[0]}")


if __name__ == "__main__":
    main()
