"""``m2fdist faces SHARDS``: find the faces of every packed utterance once (:mod:`m2fdist.faces.facepass`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from m2fdist.cli.args import part, positive, shards_location
from m2fdist.data.decode import NUM_FRAMES
from m2fdist.faces.facepass import find_faces
from m2fdist.faces.faceset import FaceSettings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shards", type=shards_location, help="packed shards (with index.json): a folder, or an "
                   "http(s)://, s3:// or gs:// location as data.shards takes")
    p.add_argument("--out", type=Path, default=None, help="face-set folder (default SHARDS/faces, which "
                   "visual.faces=auto finds; needed for shards at a URL, then visual.faces=OUT)")
    p.add_argument("--num-frames", type=positive(int), default=NUM_FRAMES, help="frames per utterance: the stages' "
                   "data.num_frames (15, the paper's)")
    p.add_argument("--min-face-size", type=positive(int), default=20,
                   help="MTCNN's smallest face: visual.min_face_size")
    p.add_argument("--splits", default="", help="comma-separated splits (default: all)")
    p.add_argument("--chunk", type=positive(int), default=8, help="utterances per MTCNN batch (x num-frames frames)")
    p.add_argument("--workers", type=int, default=2, help="loader workers decoding frames")
    p.add_argument("--device", default="auto", help="auto (cuda when there is one), cpu, cuda, cuda:1, ...")
    p.add_argument("--part", type=part, default=(0, 1), help="shard j goes to part j mod n (one per GPU)")
    p.add_argument("--overwrite", action="store_true", help="redo finished shards (other settings)")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.workers < 0:
        raise ValueError("--workers must be >= 0")
    totals = find_faces(args.shards, args.out, FaceSettings(args.num_frames, args.min_face_size),
                        [s for s in args.splits.split(",") if s] or None, args.chunk, args.workers,
                        args.device, args.part, args.overwrite, not args.no_progress)
    rate = totals["utterances"] / totals["seconds"] if totals["seconds"] else 0.0
    print(f"faces: {totals['shards']} shards, {totals['utterances']} utterances ({rate:.1f}/s on "
          f"{totals['device']}), {totals['faces']} faces, {totals['skipped']} undecodable samples recorded")
    return 0
