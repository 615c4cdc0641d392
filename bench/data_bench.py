"""Data benchmark: utterance samples/s from shards versus from the raw tree, and the packing rate.

Clips are MELD-sized (1280x720, 24 fps, 1-3 s, AAC audio) from ``m2fdist synth``. Both loaders use the
same decoding (decord, 15 uniform frames; 16 kHz mono audio) and the same DataLoader; the raw loader
must also pull the audio out of each mp4 (ffmpeg), which is what packing saves. Rates are steady state
(from the first batch on); beside them, the CPU time the loader workers (and their ffmpeg children) spent
per sample, which is the figure that holds on a busy machine. Prints a markdown table.

    .venv/bin/python bench/data_bench.py [--dialogs 8] [--sides 224,320,480] [--workers 1,2] [--repeat 1]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from loader_bench import cpu_name, measure
from torch.utils.data import DataLoader, Dataset

from m2fdist.common.media import audio_from_video
from m2fdist.data import LoaderConfig, make_loader, sample_frames
from m2fdist.pack import PackOptions, pack
from m2fdist.raw import read_meld
from m2fdist.synth import synth_meld


class RawMeld(Dataset):
    """What training straight from MELD.Raw would do per utterance."""

    def __init__(self, root: Path, split: str, size: tuple[int, int] | None = None):
        self.utts = read_meld(root).utterances(split)
        self.size = size

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, i: int) -> dict:
        u = self.utts[i]
        return {"frames": torch.from_numpy(sample_frames(u.video, 15, self.size)),
                "audio": torch.from_numpy(audio_from_video(Path(u.video))), "label": u.label_id}


def rate(loader, count, repeat: int) -> tuple[float, float]:
    """Best steady-state samples/s and best CPU ms per sample of the decoding processes, over ``repeat``
    runs (see loader_bench.measure; CPU time is the figure that holds on a busy machine)."""
    runs = [measure(loader, count) for _ in range(repeat)]
    return max(r for r, _ in runs), min(c for _, c in runs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dialogs", type=int, default=8)
    p.add_argument("--sides", default="224,320,480")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--repeat", type=int, default=1, help="runs per row; the best is reported")
    p.add_argument("--keep", type=Path, default=None, help="keep the corpus and shards here")
    args = p.parse_args()
    sides = [int(s) for s in args.sides.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    work = args.keep or Path(tempfile.mkdtemp(prefix="m2fdist-bench-"))
    raw = work / "MELD.Raw"
    if not raw.exists():
        synth_meld(raw, args.dialogs, seed=0, size=(1280, 720), workers=2, progress=False)
    n_train = len(read_meld(raw).utterances("train"))
    print(f"{cpu_name()}; corpus: {n_train} train utterances at 1280x720, 24 fps\n")
    rows = []
    for w in workers:
        loader = DataLoader(RawMeld(raw, "train"), batch_size=1, num_workers=w, collate_fn=lambda b: b)
        rows.append(("raw tree (mp4 1280x720)", "-", w, *rate(loader, len, args.repeat), None))
    for side in sides:
        out = work / f"shards-{side}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        index = pack("meld", raw, out, workers=2, options=PackOptions(max_side=side), progress=False)
        total = sum(e["samples"] for e in index["splits"].values())
        pack_rate = total / (time.perf_counter() - t0)
        kb = sum(s["bytes"] for e in index["splits"].values() for s in e["shards"]) / 2**10
        for w in workers:
            config = LoaderConfig(batch_size=1, num_workers=w, train=False)
            loader = make_loader(out, "train", config, rank=0, world_size=1)
            rows.append((f"shards, --max-side {side} ({kb / total:.0f} KB/utt)", f"{pack_rate:.1f}", w,
                         *rate(loader, lambda b: int(b["valid"].sum()), args.repeat), side))
    base = {w: r[3:5] for r in rows for w in workers if r[0].startswith("raw") and r[2] == w}
    print("| source | packing utt/s (2 workers) | loader workers | samples/s | vs raw | CPU ms/sample in workers "
          "| vs raw (CPU) |")
    print("|---|---|---|---|---|---|---|")
    for name, pack_rate, w, sps, cpu, _ in rows:
        print(f"| {name} | {pack_rate} | {w} | {sps:.1f} | {sps / base[w][0]:.1f}× | {cpu:.1f} | "
              f"{base[w][1] / cpu:.1f}× |")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
