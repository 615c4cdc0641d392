"""Training benchmark: samples/s and peak memory per rank for each stage under ZeRO 0, 2 and 3.

Every cell is a real `deepspeed --num_gpus 2 launch/train.py` run on CPU (DS_ACCELERATOR=cpu, bf16)
on a synthetic MELD corpus, at the tiny configs' sizes and at the paper's (roberta-large's widths with
random weights, 300-d extractors, 15 frames, D_T/D_A/D_V = 1024/300/600 for fusion, on random features).
samples/s is the median over logged steps after the first; memory is each rank's peak RSS.

    .venv/bin/python bench/train_bench.py [--stages text,audio,visual,fusion] [--zero 0,2,3]
                                          [--sizes tiny,paper] [--steps 4] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from m2fdist.common.modalities import NAMES
from m2fdist.format.index import write_index
from m2fdist.runtime.process import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

PAPER = {
    "text": ["text.max_length=128", "data.batch_size=2"],
    "audio": ["audio.embed_dim=300", "audio.seconds=8.0", "data.batch_size=8"],
    "visual": ["visual.embed_dim=300", "visual.face_size=112", "visual.scene_size=224", "data.num_frames=15",
               "data.batch_size=2"],
    "fusion": ["fusion.dim_text=1024", "fusion.dim_audio=300", "fusion.dim_visual=600", "fusion.num_heads=8",
               "fusion.head_hidden=512", "fusion.num_layers=1", "fusion.num_fusion_layers=5", "data.batch_size=2"],
}


def prepare(work: Path) -> dict[str, Path]:
    """Corpus, shards, tiny and roberta-large-sized text models, and tiny / paper-sized feature shards."""
    from m2fdist.data.stream import group_dialogs, read_samples
    from m2fdist.format.features import FeatureShardWriter
    from m2fdist.format.index import load_index
    from m2fdist.pack import PackOptions, pack
    from m2fdist.synth import synth_meld

    paths = {"raw": work / "MELD.Raw", "shards": work / "shards", "tiny": work / "roberta-tiny",
             "large": work / "roberta-large-random"}
    if not paths["raw"].exists():
        synth_meld(paths["raw"], 8, seed=0, size=(320, 180), workers=2, progress=False)
    if not (paths["shards"] / "index.json").exists():
        pack("meld", paths["raw"], paths["shards"], workers=2, options=PackOptions(max_side=320), progress=False)
    if not paths["tiny"].exists():
        subprocess.run([str(BIN / "m2fdist"), "tiny-text", "--shards", str(paths["shards"]), "--out",
                        str(paths["tiny"])], check=True, capture_output=True)
    if not paths["large"].exists():
        from model_bench import ROBERTA_LARGE
        from transformers import AutoTokenizer, RobertaConfig, RobertaModel

        config = RobertaConfig(**ROBERTA_LARGE)
        RobertaModel(config, add_pooling_layer=False).save_pretrained(paths["large"])
        AutoTokenizer.from_pretrained(paths["tiny"]).save_pretrained(paths["large"])
    index = load_index(paths["shards"])
    rng = np.random.default_rng(0)
    for size, dims in (("tiny", (32, 16, 32)), ("paper", (1024, 300, 600))):
        out = work / f"features-{size}"
        paths[f"features-{size}"] = out
        if (out / "index.json").exists():
            continue
        out.mkdir(parents=True, exist_ok=True)
        splits = {}
        for split, entry in index["splits"].items():
            writer = FeatureShardWriter(out / f"{split}-000000.tar")
            for d in group_dialogs(read_samples([str(paths["shards"] / s["url"]) for s in entry["shards"]])):
                labels = np.array([json.loads(u["json"])["label_id"] for u in d["utterances"]], dtype=np.int64)
                feats = {n: rng.standard_normal((len(labels), k)).astype(np.float32)
                         for n, k in zip(NAMES, dims, strict=True)}
                writer.write(f"meld_{split}_{d['dialog']}", {"dialog": d["dialog"], "keys": []},
                             {**feats, "labels": labels})
            writer.close()
            splits[split] = {"shards": [{"url": f"{split}-000000.tar", "samples": writer.count,
                                         "dialogs": writer.count}], "samples": writer.count,
                             "dialogs": writer.count, "labels": entry["labels"]}
        write_index(out, "features", "meld", index["label_names"], splits, dims=dict(zip(NAMES, dims, strict=True)))
    return paths


def measure(stage: str, zero: int, size: str, steps: int, paths: dict[str, Path], work: Path) -> dict:
    out = work / "runs" / f"{stage}-z{zero}-{size}"
    shards = paths[f"features-{size}"] if stage == "fusion" else paths["shards"]
    args = [f"deepspeed=configs/ds/zero{zero}.json", f"data.shards={shards}", f"output_dir={out}",
            f"train.max_steps={steps}", "train.log_every=1", "wandb.mode=disabled", "data.eval_splits=[]",
            "data.num_workers=1", "train.save_every=0"]
    if stage == "text":
        args.append(f"text.model={paths['large' if size == 'paper' else 'tiny']}")
    if size == "paper":
        args += PAPER[stage]
    cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), "launch/train.py", "--config",
           f"configs/tiny/{stage}.yaml", *args]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_SILENT": "true"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stdout[-400:] + proc.stderr[-400:]}
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in rows if r["kind"] == "train" and r["step"] > 1]
    final = json.loads((out / "final.json").read_text())
    return {"samples_per_s": statistics.median(rates) if rates else float("nan"),
            "peak_mb": max(final["peak_rss_mb_per_rank"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stages", default="text,audio,visual,fusion")
    p.add_argument("--zero", default="0,2,3")
    p.add_argument("--sizes", default="tiny,paper")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--work", type=Path, default=None, help="keep the corpus and runs here (default: a temp dir)")
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="m2fdist-train-bench-"))
    paths = prepare(work)
    print("| stage | size | ZeRO | samples/s (2 ranks) | peak RSS per rank |")
    print("|---|---|---|---|---|")
    for stage in args.stages.split(","):
        for size in args.sizes.split(","):
            for zero in map(int, args.zero.split(",")):
                r = measure(stage, zero, size, args.steps, paths, work)
                if "error" in r:
                    print(f"| {stage} | {size} | {zero} | failed: {r['error'][-120:]!r} | |", flush=True)
                else:
                    print(f"| {stage} | {size} | {zero} | {r['samples_per_s']:.1f} | {r['peak_mb']:.0f} MB |",
                          flush=True)


if __name__ == "__main__":
    main()
