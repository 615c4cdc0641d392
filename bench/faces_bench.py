"""Faces benchmark: visual-stage training samples/s with stored face boxes against MTCNN in every step.

One process, one config, one model: the face pass (``m2fdist faces``) runs once over the shards, then the
visual stage trains (loss, backward, Adam step; fp32, no DeepSpeed) in alternating blocks of steps, each
block taking boxes from the face set (``visual.faces=auto``) or from MTCNN (``visual.faces=mtcnn``). Each
block iterates a fresh train loader, so loading (decoding in workers) is inside the figure. Prints a table:
the median block rate per mode, and the face pass's own rate.

    .venv/bin/python bench/faces_bench.py [--shards DIR] [--dialogs 6] [--steps 6] [--blocks 2] \\
        [--config configs/tiny/visual.yaml] [key=value ...]

Without ``--shards`` it synthesises a MELD-layout corpus (320x180) and packs it in a temporary folder.
The blocks read the shards through a temporary folder of links, and the face pass writes its face set there
(``visual.faces=auto`` finds it), so the shards are left as they were. The pass covers the train split only
(what the blocks read). A face set already beside the shards (SHARDS/faces, same settings) is copied first
and its finished shards are not redone; the face-pass rate then comes from its stats files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from m2fdist.config.load import load_config
from m2fdist.faces.facepass import find_faces
from m2fdist.faces.faceset import FOLDER, FaceSettings
from m2fdist.training.stages import VisualStage


def corpus(tmp: Path, dialogs: int) -> Path:
    from m2fdist.pack import PackOptions, pack
    from m2fdist.synth import synth_meld

    synth_meld(tmp / "MELD.Raw", dialogs=dialogs, seed=0, workers=2, progress=False)
    pack("meld", tmp / "MELD.Raw", tmp / "shards", workers=2, options=PackOptions(), progress=False)
    return tmp / "shards"


def linked(shards: Path, dest: Path) -> Path:
    """The shards under ``dest`` as links (index.json copied), with a copy of SHARDS/faces if there is one."""
    dest.mkdir()
    for f in shards.iterdir():
        if f.suffix == ".tar":
            os.symlink(f.resolve(), dest / f.name)
    shutil.copy(shards / "index.json", dest / "index.json")
    if (shards / FOLDER).is_dir():
        shutil.copytree(shards / FOLDER, dest / FOLDER)
    return dest


def block(stage: VisualStage, model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, epoch: int) -> float:
    """Samples/s over ``steps`` training steps, from a fresh loader (its start-up included)."""
    loader = stage.loader(stage.cfg.data.train_split, True, 0, 1)
    loader.dataset.set_epoch(epoch)
    n = 0
    t0 = time.perf_counter()
    for i, batch in enumerate(loader):
        if i == steps:
            break
        loss = stage.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(batch["keys"])
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=Path, default=None)
    p.add_argument("--dialogs", type=int, default=6, help="synthetic train dialogs when --shards is not given")
    p.add_argument("--config", default="configs/tiny/visual.yaml")
    p.add_argument("--steps", type=int, default=6, help="training steps per block")
    p.add_argument("--blocks", type=int, default=2, help="blocks per mode, alternating")
    p.add_argument("overrides", nargs="*", help="key=value, applied to both modes")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shards = linked(args.shards or corpus(Path(tmp), args.dialogs), Path(tmp) / "linked")
        base = load_config(args.config, [f"data.shards={shards}", *args.overrides])
        settings = FaceSettings(base.data.num_frames, base.visual.min_face_size)
        t0 = time.perf_counter()
        totals = find_faces(shards, None, settings, splits=[base.data.train_split],
                            workers=base.data.num_workers, progress=False)
        pass_s = time.perf_counter() - t0
        if totals["utterances"] == 0:  # every train shard came finished from SHARDS/faces: their own timings
            done = [json.loads(p.read_text()) for p in (shards / FOLDER).glob(f"{base.data.train_split}-*.stats.json")]
            totals["utterances"] = sum(d["utterances"] for d in done)
            totals["faces"] = sum(d["faces"] for d in done)
            pass_s = sum(d["seconds"] for d in done)
        stages = {mode: VisualStage(load_config(args.config, [f"data.shards={shards}", *args.overrides,
                                                              f"visual.faces={value}"]))
                  for mode, value in (("stored boxes", "auto"), ("MTCNN per step", "mtcnn"))}
        torch.manual_seed(0)
        model = stages["stored boxes"].build_model().train()
        for stage in stages.values():
            stage.prepare(model)
        opt = torch.optim.Adam(model.parameters(), lr=base.train.lr)
        rates: dict[str, list[float]] = {m: [] for m in stages}
        for b in range(args.blocks):
            for mode, stage in stages.items():
                rates[mode].append(block(stage, model, opt, args.steps, b))
    c = base.visual
    print(f"\nvisual stage, {args.config} {' '.join(args.overrides)}: batch {base.data.batch_size}, "
          f"{base.data.num_frames} frames, face {c.face_size} px / scene {c.scene_size} px, {c.embed_dim}-d, "
          f"{base.data.num_workers} loader workers, {torch.get_num_threads()} threads, {platform.processor() or 'cpu'}")
    print(f"face pass: {totals['utterances']} utterances in {pass_s:.1f} s "
          f"({totals['utterances'] / pass_s:.2f} utt/s, {totals['device']}, {totals['faces']} faces)\n")
    print("| face boxes | train samples/s (median of blocks) | blocks | vs MTCNN |")
    print("|---|---|---|---|")
    ref = statistics.median(rates["MTCNN per step"])
    for mode, r in rates.items():
        med = statistics.median(r)
        print(f"| {mode} | {med:.2f} | {', '.join(f'{x:.2f}' for x in r)} | {med / ref:.2f}× |")


if __name__ == "__main__":
    main()
