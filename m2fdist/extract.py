"""``m2fdist extract``: run the trained text, audio and visual extractors over the utterance shards and
write dialog feature shards for the fusion stage.

    deepspeed --num_gpus N launch/extract.py --config configs/meld/extract.yaml [key=value ...]
    python -m m2fdist.extract --config ...                                   (one process)

Dialogs are spread over ranks the way evaluation spreads them (each exactly once); each rank writes one
tar per split, then its stats file as the completion marker, so a rerun skips what is done. Rank 0
writes ``index.json`` once every rank has finished.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from m2fdist.config import ConfigError, RunConfig, load_config
from m2fdist.data import LoaderConfig, make_loader
from m2fdist.data.features import FeatureShardWriter
from m2fdist.export import load_exported
from m2fdist.jit_lock import stale_lock_watch
from m2fdist.labels import LABELS
from m2fdist.pack.index import FORMAT_VERSION, load_index
from m2fdist.raw.base import make_key
from m2fdist.train import _local_leader, _single_process_env, init_distributed, parse_args, shutdown

MODALITIES = ("text", "audio", "visual")


def load_extractors(cfg: RunConfig, device: str) -> dict[str, torch.nn.Module]:
    models = {}
    for name in MODALITIES:
        path = getattr(cfg.extract, name)
        if not path:
            continue
        run_cfg, model = load_exported(Path(path), device)
        if run_cfg.stage != name:
            raise ConfigError(f"extract.{name}={path} is an export of the {run_cfg.stage} stage")
        models[name] = model
    if not models:
        raise ConfigError("extract.text / extract.audio / extract.visual: give at least one exported model")
    return models


@torch.no_grad()
def dialog_features(models: dict[str, torch.nn.Module], batch: dict[str, Any], i: int) -> dict[str, np.ndarray]:
    """Per-utterance features [k, D] of dialog i of a dialog batch."""
    k = int(batch["mask"][i].sum())
    out = {}
    if "text" in models:
        m = models["text"]
        out["text"] = m.sentence_vector(**m.tokenize_metas(batch["meta"][i]))
    if "audio" in models:
        out["audio"] = models["audio"](batch["audio"][i, :k], batch["audio_len"][i, :k])
    if "visual" in models:
        out["visual"] = models["visual"](batch["frames"][i, :k], batch["frame_hw"][i, :k])
    return {name: x.float().cpu().numpy() for name, x in out.items()}


def shard_name(split: str, rank: int, world: int) -> str:
    return f"{split}-r{rank:03d}of{world:03d}"


def run(cfg: RunConfig) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    models = load_extractors(cfg, device)
    out = Path(cfg.extract.out)
    out.mkdir(parents=True, exist_ok=True)
    members = ("json",) + (("wav",) if "audio" in models else ()) + (("mp4",) if "visual" in models else ())
    source = load_index(Path(cfg.data.shards))
    d = cfg.data
    loader_cfg = LoaderConfig(level="dialog", batch_size=d.batch_size, num_workers=d.num_workers, train=False,
                              num_frames=d.num_frames, members=members,
                              frame_size=(d.frame_width, d.frame_height) if d.frame_width else None)
    for split in cfg.extract.splits:
        if split not in source["splits"]:
            continue
        name = shard_name(split, rank, world)
        if (out / f"{name}.stats.json").is_file():
            continue
        loader = make_loader(Path(cfg.data.shards), split, loader_cfg, rank, world)
        writer = FeatureShardWriter(out / f"{name}.tar")
        labels: Counter[str] = Counter()
        utterances = 0
        for batch in tqdm(loader, desc=f"extract {split}", disable=rank != 0, file=sys.stderr):
            for i, valid in enumerate(batch["valid"].tolist()):
                if not valid:
                    continue
                keys = batch["keys"][i]
                y = batch["labels"][i, : len(keys)].numpy()
                meta = {"dataset": cfg.dataset, "split": split, "dialog": batch["dialog"][i], "keys": keys}
                feats = dialog_features(models, batch, i)
                writer.write(make_key(cfg.dataset, split, "dialog", str(batch["dialog"][i])), meta,
                             {**feats, "labels": y.astype(np.int64)})
                labels.update(LABELS[cfg.dataset][int(v)] for v in y)
                utterances += len(keys)
        writer.close()
        dims = {n: int(v.shape[1]) for n, v in feats.items()} if writer.count else {}
        stats = {"shard": f"{name}.tar", "split": split, "count": writer.count, "dialogs": writer.count,
                 "utterances": utterances, "labels": dict(labels), "dims": dims}
        (out / f"{name}.stats.json").write_text(json.dumps(stats))
    dist.barrier()
    if rank == 0:
        write_index(out, cfg, world)
    dist.barrier()


def write_index(out: Path, cfg: RunConfig, world: int) -> None:
    names = list(LABELS[cfg.dataset])
    splits: dict[str, Any] = {}
    dims: dict[str, int] = {}
    for split in cfg.extract.splits:
        stats = [json.loads(p.read_text()) for p in sorted(out.glob(f"{split}-r*of{world:03d}.stats.json"))]
        if not stats:
            continue
        labels = Counter()
        for s in stats:
            labels.update(s["labels"])
            dims.update(s["dims"])
        splits[split] = {
            "shards": [{"url": s["shard"], "samples": s["count"], "dialogs": s["count"]} for s in stats if s["count"]],
            "samples": sum(s["count"] for s in stats), "dialogs": sum(s["count"] for s in stats),
            "utterances": sum(s["utterances"] for s in stats), "labels": {n: labels.get(n, 0) for n in names},
        }
    index = {"format": FORMAT_VERSION, "kind": "features", "dataset": cfg.dataset, "label_names": names,
             "dims": dims, "source": cfg.data.shards, "splits": splits,
             "extractors": {n: getattr(cfg.extract, n) for n in MODALITIES}}
    tmp = out / "index.json.tmp"
    tmp.write_text(json.dumps(index, indent=1))
    tmp.replace(out / "index.json")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _single_process_env()
    try:
        cfg = load_config(args.config, args.overrides)
        if cfg.stage != "extract":
            raise ConfigError(f"{args.config} is a {cfg.stage} config; extraction takes stage: extract")
        if not (Path(cfg.data.shards) / "index.json").is_file():
            raise ConfigError(f"data.shards={cfg.data.shards}: no index.json there; pack the corpus first")
        for name in MODALITIES:
            path = getattr(cfg.extract, name)
            if path and not (Path(path) / "model.safetensors").is_file():
                raise ConfigError(f"extract.{name}={path}: no exported model there (run `m2fdist export RUN`)")
    except ConfigError as e:
        print(f"m2fdist extract: config error: {e}", file=sys.stderr)
        return 2
    with stale_lock_watch(enabled=_local_leader()):
        init_distributed()
        run(cfg)
    shutdown(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
