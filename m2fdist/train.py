"""One DeepSpeed training loop for every stage (text, audio, visual, fusion).

    deepspeed [--hostfile H] [--num_gpus N] launch/train.py --config configs/meld/text.yaml [key=value ...]
    python -m m2fdist.train --config ... [key=value ...]            (one process)
    accelerate launch --config_file configs/accelerate/zero2.yaml launch/train.py --config ...

The stage (``m2fdist.stages``) supplies the model, loaders, loss and evaluation outputs; this module
owns everything distributed: config checks before the process group, DeepSpeed, logging on rank 0,
evaluation gathered across ranks, checkpoints with exact resume.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from m2fdist import checkpoint, shm_buffers
from m2fdist.config import ConfigError, RunConfig, deepspeed_config, load_config
from m2fdist.jit_lock import stale_lock_watch
from m2fdist.metrics import classification_metrics, knn_predict
from m2fdist.precision import Precision
from m2fdist.stages import STAGES
from m2fdist.tracking import Tracker

KILL_ENV = "M2FDIST_KILL_AT_STEP"  # tests: rank 0 SIGKILLs itself after this step, like a preempted node


@dataclass
class State:
    """Where training is; saved in every checkpoint's client state."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # micro-batches of the current epoch already trained on (by this rank)
    best_f1: float = -1.0
    best_tag: str | None = None
    wandb_id: str | None = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="m2fdist train", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="YAML run config (configs/<dataset>/<stage>.yaml)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=100")
    return p.parse_args(argv)


def _single_process_env() -> None:
    """Plain ``python -m m2fdist.train``: a world of one, as the launcher would describe it."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _single_process_env()
    try:
        cfg = load_config(args.config, args.overrides)
        if cfg.stage == "extract":
            raise ConfigError("stage=extract runs with `m2fdist extract` / launch/extract.py, not the trainer")
        ds_config, precision = deepspeed_config(cfg, int(os.environ["WORLD_SIZE"]))
    except ConfigError as e:
        print(f"m2fdist train: config error: {e}", file=sys.stderr)
        return 2
    with stale_lock_watch(enabled=_local_leader()):
        init_distributed()
        rc = Trainer(cfg, ds_config, precision).run()
    shutdown(rc)
    return rc


def _local_leader() -> bool:
    return os.environ.get("LOCAL_RANK", "0") == "0"


def share_cores() -> int | None:
    """Give this rank its share of the node's cores as torch threads, unless OMP_NUM_THREADS says otherwise.

    The deepspeed launcher (unlike torchrun) leaves OMP_NUM_THREADS unset, so every rank starts one thread
    per core: on 2 cores, 2 ranks ran 4 spinning OpenMP threads, and feature extraction took 8 s per
    batch instead of 1.4 s. Returns the thread count it set, or None when it left torch's default alone.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    local = int(os.environ.get("LOCAL_SIZE") or os.environ.get("LOCAL_WORLD_SIZE") or 1)
    if local <= 1:
        return None
    threads = max(1, len(os.sched_getaffinity(0)) // local)
    torch.set_num_threads(threads)
    return threads


def init_distributed() -> None:
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    share_cores()
    if _local_leader():
        shm_buffers.remove_orphans()
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name())


def shutdown(rc: int) -> None:
    """Leave the process group together, then exit without C++ static teardown.

    With several ranks, a non-master node sometimes died after finishing its work with "terminate called
    without an active exception" (exit code 250): a communication thread still joinable when the
    interpreter tore down. Everything is written and flushed by now, so the process exits directly.
    Past the barrier no peer opens this rank's shared-memory buffer by name any more: it is unlinked here.
    """
    if not dist.is_initialized():
        return
    world, rank = dist.get_world_size(), dist.get_rank()
    dist.barrier()
    shm_buffers.release_own_buffer(rank)
    dist.destroy_process_group()
    if world > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


def _align_buffers(module: torch.nn.Module) -> None:
    """DeepSpeed's bf16/fp16 casts parameters but not buffers: BatchNorm's running statistics follow here.

    Modules that say ``keeps_fp32_buffers`` (feature standardisation) compute in float32 and keep them.
    """
    dtype = next(module.parameters()).dtype
    for sub in module.modules():
        if getattr(sub, "keeps_fp32_buffers", False):
            continue
        for name, buf in sub.named_buffers(recurse=False):
            if buf.is_floating_point() and buf.dtype != dtype:
                setattr(sub, name, buf.to(dtype))


class Trainer:
    def __init__(self, cfg: RunConfig, ds_config: dict[str, Any], precision: Precision):
        self.cfg, self.ds_config, self.precision = cfg, ds_config, precision
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.out = Path(cfg.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.stage = STAGES[cfg.stage](cfg)
        self.state = State()
        self.last_saved = -1

    # -- setup ---------------------------------------------------------------------------------------
    def setup(self) -> None:
        import deepspeed

        cfg = self.cfg
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        model = self.stage.build_model()
        self.stage.prepare(model)
        torch.manual_seed(cfg.train.seed + 1000 * self.rank)  # per-rank randomness from here on
        np.random.seed(cfg.train.seed + 1000 * self.rank)
        self.train_loader = self.stage.loader(cfg.data.train_split, True, self.rank, self.world)
        self.accum = self.ds_config["gradient_accumulation_steps"]
        self.steps_per_epoch = len(self.train_loader) // self.accum
        if self.steps_per_epoch == 0:
            raise ConfigError(f"one epoch has {len(self.train_loader)} batches per rank, fewer than "
                              f"gradient accumulation {self.accum}")
        self.total = cfg.train.max_steps or cfg.train.epochs * self.steps_per_epoch
        warmup, total = cfg.train.warmup_steps, self.total

        def schedule(step: int) -> float:  # linear warmup, then linear decay to zero at the last step
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (total - step) / max(1, total - warmup))

        optimizer = torch.optim.AdamW(self.stage.param_groups(model), lr=cfg.train.lr)
        resume = checkpoint.resolve(cfg.resume, self.out)
        load = None
        if resume:
            ckpt_dir, tag = resume
            if checkpoint.saved_world_size(ckpt_dir, tag) != self.world:
                tag = checkpoint.to_universal(ckpt_dir, tag).name
                self.ds_config["checkpoint"] = {"load_universal": True}
            load = (ckpt_dir, tag)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
        )
        _align_buffers(self.engine.module)
        if load:
            self._load(*load)
        self.eval_loaders = {s: self.stage.loader(s, False, self.rank, self.world) for s in cfg.data.eval_splits}
        if self.rank == 0:
            print(f"precision: {self.precision.dtype} ({self.precision.reason})", file=sys.stderr)
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        self.tracker = Tracker(self.out, {**cfg.to_dict(), "world_size": self.world,
                                          "precision": self.precision.dtype,
                                          "precision_reason": self.precision.reason},
                               self.rank == 0, cfg.wandb, self.state.wandb_id)
        self.state.wandb_id = self.tracker.run_id

    def _load(self, ckpt_dir: Path, tag: str) -> None:
        _, client = self.engine.load_checkpoint(str(ckpt_dir), tag=tag)
        if client is None:
            raise RuntimeError(f"could not load checkpoint {ckpt_dir}/{tag}")
        self.state = State(**client["state"])
        saved_world = len(client["rng"])
        if saved_world == self.world:
            checkpoint.set_rng_state(client["rng"][self.rank])
        else:  # a new world size: same samples seen so far, new per-rank randomness
            self.state.batch = self.state.batch * saved_world // self.world // self.accum * self.accum
            torch.manual_seed(self.cfg.train.seed + 1000 * self.rank + self.state.step)
        self.last_saved = self.state.step
        if self.rank == 0:
            print(f"resumed from {ckpt_dir}/{tag} at step {self.state.step} (epoch {self.state.epoch})",
                  file=sys.stderr)

    # -- loop ----------------------------------------------------------------------------------------
    def run(self) -> int:
        self.setup()
        st, cfg = self.state, self.cfg
        kill_at = int(os.environ.get(KILL_ENV, 0))
        while st.step < self.total:
            self.train_loader.dataset.set_epoch(st.epoch, skip_batches=st.batch)
            self.engine.train()
            losses: list[float] = []
            t0, samples = time.time(), 0
            for batch in self.train_loader:
                loss = self.stage.loss(self.engine, batch)
                self.engine.backward(loss)
                self.engine.step()
                st.batch += 1
                losses.append(float(loss.detach()))
                samples += len(batch["labels"])
                if st.batch % self.accum:
                    continue
                st.step += 1
                if st.step % cfg.train.log_every == 0 or st.step == 1 or st.step == self.total:
                    self._log_train(losses, samples, time.time() - t0)
                losses, t0, samples = [], time.time(), 0
                if cfg.train.eval_every and st.step % cfg.train.eval_every == 0:
                    self._evaluate()
                if cfg.train.save_every and st.step % cfg.train.save_every == 0:
                    self._save()
                if kill_at and st.step == kill_at and self.rank == 0:
                    os.kill(os.getpid(), signal.SIGKILL)
                if st.step >= self.total or st.batch >= self.steps_per_epoch * self.accum:
                    break
            if st.batch >= self.steps_per_epoch * self.accum:  # the epoch is complete
                st.epoch, st.batch = st.epoch + 1, 0
                if st.step < self.total:
                    self._evaluate()
                    self._save()
        final = self._evaluate(final=True)
        self._save()
        peaks: list[Any] = [None] * self.world
        dist.all_gather_object(peaks, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        if self.rank == 0:
            summary = {"stage": cfg.stage, "step": st.step, "epoch": st.epoch, "best_tag": st.best_tag,
                       "best_dev_weighted_f1": st.best_f1, "metrics": final, "world_size": self.world,
                       "peak_rss_mb_per_rank": [round(p) for p in peaks], "torch_threads": torch.get_num_threads(),
                       "precision": self.precision.dtype, "precision_reason": self.precision.reason}
            (self.out / "final.json").write_text(json.dumps(summary, indent=1))
        self.tracker.finish()
        dist.barrier()
        return 0

    def _log_train(self, losses: list[float], samples: int, seconds: float) -> None:
        stats = torch.tensor([sum(losses) / max(1, len(losses)), samples], dtype=torch.float64)
        dist.all_reduce(stats)
        norm = self.engine.get_global_grad_norm()
        self.tracker.log(self.state.step, {
            "loss": float(stats[0]) / self.world, "lr": self.scheduler.get_last_lr()[-1],
            "grad_norm": float(norm) if norm is not None else None, "epoch": self.state.epoch,
            "samples_per_s": float(stats[1]) / max(seconds, 1e-9),
        })

    # -- evaluation ----------------------------------------------------------------------------------
    def _evaluate(self, final: bool = False) -> dict[str, Any]:
        results: dict[str, Any] = {}
        self.engine.eval()
        for split, loader in self.eval_loaders.items():
            labels, outputs, keys = [], [], []
            with torch.no_grad():
                for batch in loader:
                    y, o, k = self.stage.evaluate(self.engine, batch)
                    labels.append(y)
                    outputs.append(o)
                    keys += k
            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, (labels, outputs, keys))
            if self.rank == 0:
                results[split] = self._score(split, gathered, final)
        self.engine.train()
        scores = [results.get("dev", {}).get("weighted_f1", -1.0)]
        dist.broadcast_object_list(scores, src=0)
        if "dev" in self.eval_loaders and scores[0] > self.state.best_f1:
            self.state.best_f1 = scores[0]
            self.state.best_tag = checkpoint.tag_for(self.state.step)
            self._save()
            checkpoint.mark_best(self.ckpt_dir, self.state.best_tag)
        return results

    def _score(self, split: str, gathered: list[Any], final: bool) -> dict[str, Any]:
        labels = np.concatenate([a for g in gathered for a in g[0]]) if gathered else np.zeros(0)
        outputs = np.concatenate([a for g in gathered for a in g[1]])
        keys = [k for g in gathered for k in g[2]]
        if self.stage.predicts_labels:
            preds = outputs.argmax(axis=1)
        else:
            preds = knn_predict(outputs, labels, self.cfg.triplet.knn, len(self.stage.names))
        metrics = classification_metrics(labels, preds, self.stage.names)
        self.tracker.log_eval(self.state.step, split, metrics, self.stage.names, labels, preds)
        if final:
            pred_dir = self.out / "predictions"
            pred_dir.mkdir(parents=True, exist_ok=True)
            with (pred_dir / f"{split}.jsonl").open("w") as f:
                for i, key in enumerate(keys):
                    row = {"key": key, "label": int(labels[i]), "pred": int(preds[i])}
                    if self.stage.predicts_labels:
                        row["probs"] = [round(float(p), 6) for p in outputs[i]]
                    f.write(json.dumps(row) + "\n")
        return metrics

    # -- checkpoints ---------------------------------------------------------------------------------
    def _save(self) -> None:
        if self.last_saved == self.state.step:
            return
        client = {"state": vars(self.state).copy(), "config": self.cfg.to_dict()}
        checkpoint.save(self.engine, self.ckpt_dir, self.state.step, client, self.cfg.train.keep_last,
                        self.state.best_tag)
        self.last_saved = self.state.step


if __name__ == "__main__":
    sys.exit(main())
