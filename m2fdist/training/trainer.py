"""One DeepSpeed training loop for every stage (text, audio, visual, fusion); ``m2fdist train`` runs it.

The stage (:mod:`m2fdist.training.stages`) supplies the model, loaders, loss and evaluation outputs; this module
owns the loop around them: DeepSpeed, logging on rank 0, evaluation gathered across ranks, checkpoints with
exact resume. Config checks happen before the process group, in the command (:mod:`m2fdist.cli.train`).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from m2fdist.common import atomic, progress
from m2fdist.common.labels import run_labels
from m2fdist.config.errors import ConfigError
from m2fdist.config.schema import RunConfig
from m2fdist.evaluation.scoring import Outputs, collect, prediction_rows, score
from m2fdist.models.device import device_of, dtype_of
from m2fdist.runtime import deepspeed_config as ds_settings
from m2fdist.runtime.precision import Precision
from m2fdist.runtime.process import return_freed_memory, trim_freed_memory
from m2fdist.runtime.zero3_embedding import shard_frozen_embeddings
from m2fdist.runtime.zero_norm import use_chunked_norm
from m2fdist.training import checkpoint, preemption, runlock, throughput
from m2fdist.training.stages import STAGE_TYPES
from m2fdist.training.tracking import Tracker

KILL_ENV = "M2FDIST_KILL_AT_STEP"  # tests: rank 0 SIGKILLs itself after this step, like a preempted node
# tests: rank 0's loss is NaN at these optimizer steps (comma-separated), like a batch that poisons the model
NAN_ENV = "M2FDIST_NAN_AT_STEPS"


@dataclass
class State:
    """Where training is; saved in every checkpoint's client state."""
    step: int = 0
    epoch: int = 0
    batch: int = 0  # micro-batches of the current epoch already trained on (by this rank)
    best_f1: float = -1.0
    best_tag: str | None = None
    best_metrics: dict[str, Any] | None = None  # per eval split: the scores of the checkpoint best_tag names
    wandb_id: str | None = None
    skipped: list[int] = field(default_factory=list)  # steps skipped as non-finite (train.nonfinite=skip)
    skips_in_row: int = 0  # of them, the latest steps in a row


def check_resume(cfg: RunConfig) -> None:
    """Before any process group: a fresh run never lands on an earlier one, and a resume says what changed.

    Changes that alter what the next step computes (model shape, batch, precision, data) are refused unless
    ``allow_config_change=true``; the universal-checkpoint path covers only a changed world size.
    """
    out = Path(cfg.output_dir)
    try:
        if not cfg.resume:
            checkpoint.check_fresh(out)
            return
        found = checkpoint.resolve(cfg.resume, out)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None
    saved = checkpoint.saved_config(*found) if found else None
    if saved is None:
        return
    if "labels" not in saved:  # saved before configs recorded their labels: MELD's or IEMOCAP's fixed set then
        saved["labels"] = run_labels(saved.get("dataset", ""), [])
    harmless, breaking = checkpoint.config_changes(saved, cfg.to_dict())
    if harmless and int(os.environ.get("RANK", 0)) == 0:
        print("resume: config changed since the checkpoint: " + "; ".join(harmless), file=sys.stderr)
    if breaking and not cfg.allow_config_change:
        raise ConfigError(f"resume from {found[0] / found[1]}: these changes break an exact resume: "
                          + "; ".join(breaking) + " (allow_config_change=true to resume anyway)")
    if breaking and int(os.environ.get("RANK", 0)) == 0:
        print("resume: allow_config_change=true, continuing despite: " + "; ".join(breaking), file=sys.stderr)


def _align_buffers(module: torch.nn.Module) -> None:
    """DeepSpeed's bf16/fp16 casts parameters but not buffers: BatchNorm's running statistics follow here.

    Modules that say ``keeps_fp32_buffers`` (feature standardisation) compute in float32 and keep them. Buffers
    outside the state dict (non-persistent: a rotary embedding's ``inv_freq``) are derived constants that their
    module computes with in float32 on purpose (rotary angles lose precision at long positions in bf16), so
    they keep their dtype too.
    """
    dtype = dtype_of(module)
    for sub in module.modules():
        if getattr(sub, "keeps_fp32_buffers", False):
            continue
        transient = getattr(sub, "_non_persistent_buffers_set", set())
        for name, buf in sub.named_buffers(recurse=False):
            if name not in transient and buf.is_floating_point() and buf.dtype != dtype:
                setattr(sub, name, buf.to(dtype))


def adamw(groups: list[dict[str, Any]], lr: float) -> torch.optim.AdamW:
    """AdamW over ``groups``, fused where torch has a fused kernel for every parameter's device and dtype.

    torch's default on a CPU is the single-tensor loop (foreach only on CUDA): on 2 CPU ranks that update took
    three times the HF Trainer's ``adamw_torch_fused`` (py-spy, MiniLM). The fused kernel (CPU, CUDA, XPU,
    MPS...; float, double, half, bf16) does the same arithmetic in one pass. DeepSpeed keeps the client optimizer
    and swaps its params for its fp32 partitions (ZeRO 1-3, bf16/fp16 master weights), on the same device.
    Elsewhere (another device, a dtype without the kernel) torch's own default: foreach where it has one.
    """
    try:  # torch's own list (private; 2.4-2.11 at least)
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        devices = set(_get_fused_kernels_supported_devices())
    except ImportError:
        devices = {"cpu", "cuda"}
    fused = all(p.device.type in devices and p.dtype in FUSED_DTYPES for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, fused=fused or None)


FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)  # AdamW's fused kernel's


class NonFiniteTraining(RuntimeError):
    """The loss or the gradient norm went NaN or infinite: the run stops rather than ship a diverged model."""


class Trainer:
    def __init__(self, cfg: RunConfig, ds_config: dict[str, Any], precision: Precision):
        self.cfg, self.ds_config, self.precision = cfg, ds_config, precision
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.out = Path(cfg.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.stage = STAGE_TYPES[cfg.stage](cfg)
        self.partitioned_load: Any = None  # ZeRO-3: transformers' HfDeepSpeedConfig, alive while the run is
        self.state = State()
        self.last_saved = -1
        # the signals are caught from the start: one during set-up (loading, the first batches) is acted on at
        # the first step
        self.flops_per_unit: float | None = None
        self.peak: throughput.Peak | None = None  # what MFU is taken against (set once the engine is up)
        # (seconds, samples, tokens) this rank trained since the last log line, and over the whole run: the
        # seconds of optimizer steps only, so an evaluation or a save between steps is not charged to training
        self.window, self.run_totals = [0.0, 0, 0], [0.0, 0, 0]
        self.stop = preemption.StopRequest()
        self.stop.install(cfg.train.stop_signals)
        self.stop.watch_launcher()

    # -- setup ---------------------------------------------------------------------------------------
    def setup(self) -> None:
        # here, not at the top: deepspeed's import costs seconds; checks and --help never pay it
        import deepspeed

        cfg = self.cfg
        runlock.check_same_folder(cfg.output_dir)
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        model = self._build()
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

        optimizer = adamw(self.stage.param_groups(model), cfg.train.lr)
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
        use_chunked_norm(self.engine.optimizer)  # ZeRO 1/2: the clipping norm without fp64 copies of every grad
        self.peak = throughput.run_peak(device_of(self.engine.module), self.precision.dtype, cfg.train.peak_tflops)
        if load:
            self._load(*load)
        self.eval_loaders = {s: self.stage.loader(s, False, self.rank, self.world) for s in cfg.data.eval_splits}
        if self.rank == 0:
            print(f"precision: {self.precision.dtype} ({self.precision.reason})", file=sys.stderr)
            self.out.mkdir(parents=True, exist_ok=True)
            atomic.write_json(self.out / "config.json", cfg.to_dict())
        self.tracker = Tracker(self.out, {**cfg.to_dict(), "world_size": self.world,
                                          **throughput.peak_record(self.peak), "precision": self.precision.dtype,
                                          "precision_reason": self.precision.reason},
                               self.rank == 0, cfg.wandb, self.state.wandb_id)
        self.state.wandb_id = self.tracker.run_id
        self.ds_skipped = self.engine.skipped_steps  # steps DeepSpeed left unapplied so far (restored on resume)
        self.skipped_now = False  # this step was skipped as non-finite

    def _build(self) -> torch.nn.Module:
        """The stage's model; under ZeRO-3 a text model is built partitioned, its frozen input embedding is looked
        up from the partitions (:mod:`~m2fdist.runtime.zero3_embedding`), and what ZeRO-3 may keep gathered
        is bounded (:func:`~m2fdist.runtime.deepspeed_config.cap_stage3_gathers`)."""
        cfg = self.cfg
        self.zero3 = ds_settings.zero_stage(self.ds_config) == 3
        if self.zero3:
            return_freed_memory()  # gathered layers' buffers go back to the OS when freed, not to malloc's cache
        # held for the run: transformers and peft look it up while the model is built and adapted
        self.partitioned_load = (ds_settings.partition_at_load(self.ds_config)
                                 if cfg.stage == "text" and cfg.text.partition_at_load else None)
        model = self.stage.build_model()
        self.stage.prepare(model)
        if self.partitioned_load is not None:
            ds_settings.cast_unpartitioned(model, self.ds_config)
            if self.stage.frozen_source() is not None:  # frozen weights are read back from there, never saved
                looked_up = shard_frozen_embeddings(model)
                if looked_up and self.rank == 0:
                    print(f"ZeRO-3: {', '.join(looked_up)} looked up from the ranks' partitions, not gathered",
                          file=sys.stderr)
        n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        ds_settings.cap_stage3_gathers(self.ds_config, n_params)
        return model

    def _load(self, ckpt_dir: Path, tag: str) -> None:
        # a save without the frozen base (LoRA): build_model has just read the base from that same source
        partial = checkpoint.frozen_source(ckpt_dir, tag) is not None
        _, client = self.engine.load_checkpoint(str(ckpt_dir), tag=tag, load_module_strict=not partial)
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
        poison = {int(s) for s in os.environ.get(NAN_ENV, "").split(",") if s} if self.rank == 0 else set()
        self.progress = progress.bar(self.total, cfg.stage, "step", enabled=self.rank == 0, initial=st.step)
        while st.step < self.total:
            self.train_loader.dataset.set_epoch(st.epoch, skip_batches=st.batch)
            self.engine.train()
            micro: list[torch.Tensor] = []
            t0, samples, tokens = time.time(), 0, 0
            for batch in self.train_loader:
                if self.flops_per_unit is None:  # measured once, on the run's first micro-batch
                    self.flops_per_unit = throughput.train_flops_per_unit(
                        lambda b=batch: self.stage.loss(self.engine, b), self.engine, batch)
                loss = self.stage.loss(self.engine, batch)
                loss = loss * float("nan") if st.step + 1 in poison else loss
                self.engine.backward(loss)
                self.engine.step()
                st.batch += 1
                micro.append(loss.detach())  # on the device: read at log steps (and when not finite)
                n, k = throughput.units(batch)  # the loader's host-side batch: no device sync
                samples, tokens = samples + n, tokens + k
                if st.batch % self.accum:
                    continue
                st.step += 1
                if self.zero3:
                    trim_freed_memory()  # the step's small freed blocks: the resting level stays put
                losses, micro = torch.stack(micro).float(), []
                stopping = self._agree(losses)
                self._count(time.time() - t0, samples, tokens)
                self.progress.update()
                if st.step % cfg.train.log_every == 0 or st.step in (1, self.total) or self.skipped_now:
                    self._log_train(losses)
                if cfg.train.eval_every and st.step % cfg.train.eval_every == 0:
                    self._evaluate_and_keep_best()
                if cfg.train.save_every and st.step % cfg.train.save_every == 0:
                    self._save()
                t0, samples, tokens = time.time(), 0, 0
                if stopping:
                    return self._stop_here()
                if kill_at and st.step == kill_at and self.rank == 0:
                    os.kill(os.getpid(), signal.SIGKILL)
                if st.step >= self.total or st.batch >= self.steps_per_epoch * self.accum:
                    break
            if st.batch >= self.steps_per_epoch * self.accum:  # the epoch is complete
                st.epoch, st.batch = st.epoch + 1, 0
                if st.step < self.total:
                    self._evaluate_and_keep_best()
                    self._save()
        self.progress.close()
        last = self._evaluate_and_keep_best(last=True)
        self._save()
        self._write_final(last)
        self.tracker.finish()
        dist.barrier()
        return 0

    def _write_final(self, last: dict[str, Any]) -> None:
        """final.json: the scores of the checkpoint that is exported (best on dev) and, beside them, the last step's."""
        st = self.state
        peaks: list[Any] = [None] * self.world
        dist.all_gather_object(peaks, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        speed, _ = self._rates(self.run_totals)  # this launch's training steps (a resumed run's since it resumed)
        if self.rank == 0:
            chosen = st.best_tag is not None
            summary = {"stage": self.cfg.stage, "step": st.step, "epoch": st.epoch, "best_tag": st.best_tag,
                       "best_step": int(st.best_tag[4:]) if chosen else None, "best_dev_weighted_f1": st.best_f1,
                       "scored": ("the best checkpoint on dev (what `m2fdist export` ships)" if chosen else
                                  "the last step (no dev split to choose on)"),
                       "scored_tag": st.best_tag if chosen else checkpoint.tag_for(st.step),
                       "metrics": st.best_metrics if chosen else last,
                       "last": {"step": st.step, "tag": checkpoint.tag_for(st.step), "metrics": last},
                       "world_size": self.world, "nonfinite_skipped_steps": st.skipped,
                       "peak_rss_mb_per_rank": [round(p) for p in peaks], "torch_threads": torch.get_num_threads(),
                       "throughput": {**speed, "train_flops_per_unit": self.flops_per_unit,
                                      "per": "token" if "tokens_per_s" in speed else "sample",
                                      **throughput.peak_record(self.peak)},
                       "precision": self.precision.dtype, "precision_reason": self.precision.reason}
            atomic.write_json(self.out / "final.json", summary)

    def _agree(self, losses: torch.Tensor) -> bool:
        """After each optimizer step, one all-reduce tells every rank whether any rank's loss or gradient norm
        is not finite (:meth:`_nonfinite`: stop, or skip) and whether any rank was asked to stop (returns True:
        every rank saves this step and stops together). The check runs on the device: the flags' read after the
        all-reduce is the step's one host sync; the losses themselves stay there until a log line.

        A diverged model must never be evaluated, saved or marked best: argmax of NaN logits is class 0, the
        majority class, whose scores look plausible. (Lightning's ``EarlyStopping(check_finite=True)`` and
        Composer's NaNMonitor stop too.) Because the flags are all-reduced, every rank acts at the same step and
        none is left waiting in a collective. Under fp16 a non-finite gradient norm with a finite loss is the
        loss scaler's overflow: DeepSpeed skipped that step and lowered the scale, its own handling, not ours.
        """
        norm = self.engine.get_global_grad_norm()
        unapplied = self.engine.skipped_steps > self.ds_skipped  # DeepSpeed left weights and optimizer as they were
        self.ds_skipped = self.engine.skipped_steps
        bad = ~torch.isfinite(losses).all()
        if norm is not None and self.precision.dtype != "fp16":
            bad = bad | ~torch.isfinite(torch.as_tensor(norm, device=losses.device)).all()
        flag = torch.stack([bad.float(), torch.tensor(float(self.stop.requested), device=losses.device)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        nonfinite, stop = flag.tolist()
        self.skipped_now = False
        if nonfinite:
            self._nonfinite(losses.tolist(), None if norm is None else float(norm), unapplied)
        else:
            self.state.skips_in_row = 0
        return bool(stop)

    def _nonfinite(self, losses: list[float], norm: float | None, unapplied: bool) -> None:
        """A non-finite step: skipped and counted under ``train.nonfinite=skip``, else (or once
        ``train.max_skips_in_row`` are skipped in a row) :class:`NonFiniteTraining` on every rank.

        A skip is DeepSpeed's own: its optimizers (ZeRO 1-3, bf16, fp16) check the global gradient norm before
        they update and leave weights, optimizer state and the learning-rate schedule as they were when it is
        not finite (``engine.skipped_steps`` counts it), on every rank alike. A non-finite loss whose gradients
        were finite was applied: that cannot be skipped after the fact, so it stops the run.
        """
        st, t = self.state, self.cfg.train
        what = (f"the loss ({losses[-1] if losses else None}) or the gradient norm ({norm}) is not finite on "
                "some rank")
        if t.nonfinite == "skip" and unapplied and st.skips_in_row < t.max_skips_in_row:
            st.skips_in_row += 1
            st.skipped.append(st.step)
            self.skipped_now = True
            if self.rank == 0:
                print(f"{self.cfg.stage}: step {st.step}: {what}: skipped, no weight update ({st.skips_in_row} in "
                      f"a row, {len(st.skipped)} in all; train.nonfinite=skip, at most {t.max_skips_in_row} in a "
                      "row)", file=sys.stderr, flush=True)
            return
        if t.nonfinite == "skip":
            what += (f", {st.skips_in_row + 1} steps in a row (train.max_skips_in_row={t.max_skips_in_row})"
                     if unapplied else ", and its update was applied (its gradients were finite), so it could not "
                     "be skipped")
        latest = checkpoint.read_pointer(self.ckpt_dir, "latest")
        raise NonFiniteTraining(
            f"step {st.step}: {what}; nothing of this step was evaluated or saved (last checkpoint: "
            f"{latest or 'none'}). Lower train.lr / train.encoder_lr, keep train.clip > 0, or try precision=fp32")

    def _stop_here(self) -> int:
        """Save this step (the signal's step: nothing trained is lost), requeue under SLURM, and stop.

        No evaluation: the time between SLURM's signal and its SIGKILL is for saving. A signal that reached
        another rank only is named by that rank; this one says what it does.
        """
        self.progress.close()
        self._save()
        tag = checkpoint.tag_for(self.state.step)
        if self.rank == 0:
            said = self.stop.reason or "another rank was asked to stop"
            requeued = preemption.requeue(self.cfg.train.requeue)
            print(f"{self.cfg.stage}: {said}; saved {self.ckpt_dir / tag} at step {self.state.step} of "
                  f"{self.total}" + (f"; {requeued}" if requeued else "") + f"; resume=auto continues from there "
                  f"(exit {preemption.EXIT_PREEMPTED})", file=sys.stderr, flush=True)
        self.tracker.finish()
        dist.barrier()
        return preemption.EXIT_PREEMPTED

    def _count(self, seconds: float, samples: int, tokens: int) -> None:
        for totals in (self.window, self.run_totals):
            totals[0], totals[1], totals[2] = totals[0] + seconds, totals[1] + samples, totals[2] + tokens

    def _rates(self, totals: list[float], loss: torch.Tensor | None = None) -> tuple[dict[str, float], float]:
        """Throughput over ``totals`` (this rank's seconds, samples, tokens), summed over the ranks, with the
        slowest rank's seconds (the ranks wait for each other at every step), and ``loss`` (this rank's, on
        the device) averaged over the ranks: one all-gather and one host read for the whole log line."""
        device = self.engine.device
        mine = torch.tensor(totals, dtype=torch.float64, device=device)
        mine = torch.cat([mine, (loss if loss is not None else torch.zeros(())).to(device, torch.float64)[None]])
        rows = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(rows, mine)
        table = torch.stack(rows)
        sums = table.sum(0)
        sums[0] = table[:, 0].max()
        seconds, samples, tokens, losses = sums.tolist()
        return (throughput.rates(self.flops_per_unit or 0.0, samples, tokens, seconds, self.world, self.peak),
                losses / self.world)

    def _log_train(self, losses: torch.Tensor) -> None:
        """One log line: loss, lr, gradient norm, and the throughput since the last logged step (samples/s,
        tokens/s for text, TFLOP/s per device and MFU: :mod:`.throughput`). The step's losses are read here."""
        (speed, loss), self.window = self._rates(self.window, losses.double().mean()), [0.0, 0, 0]
        norm = self.engine.get_global_grad_norm()
        skipped = {"loss": None, "grad_norm": None, "skipped": "nonfinite"} if self.skipped_now else {}
        values = {"loss": loss, "lr": self.scheduler.get_last_lr()[-1],
                  "grad_norm": float(norm) if norm is not None else None, "epoch": self.state.epoch,
                  "nonfinite_skips": len(self.state.skipped), **skipped, **speed}
        self.tracker.log(self.state.step, values)
        epochs = -(-self.total // self.steps_per_epoch)  # the epoch shown counts from 1, as people count
        loss = "skipped" if self.skipped_now else f"{values['loss']:.4f}"
        self.progress.set_postfix_str(f"epoch {values['epoch'] + 1}/{epochs}, loss {loss}, "
                                      f"lr {values['lr']:.2e}, {throughput.summary(speed)}")

    # -- evaluation ----------------------------------------------------------------------------------
    def _evaluate(self) -> dict[str, tuple[dict[str, Any], Outputs, np.ndarray]]:
        """(metrics, outputs, predictions) per eval split, gathered from every rank; on rank 0 only."""
        results = {}
        self.engine.eval()
        for split, loader in self.eval_loaders.items():
            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, collect(self.stage, self.engine, loader))
            if self.rank == 0:
                out = Outputs.join(gathered)
                metrics, preds = score(self.stage, out, self.cfg.triplet.knn)
                results[split] = (metrics, out, preds)
        self.engine.train()
        return results

    def _evaluate_and_keep_best(self, last: bool = False) -> dict[str, Any]:
        """Evaluate, log, and when dev weighted F1 improves save the checkpoint and mark it best.

        Prediction files are written for the best checkpoint (``predictions/SPLIT.jsonl``: the model that is
        exported) and, at the end, for the last step (``predictions/last/SPLIT.jsonl``).
        """
        results = self._evaluate()
        for split, (metrics, out, preds) in results.items():
            self.tracker.log_eval(self.state.step, split, metrics, self.stage.names, out.labels, preds)
            progress.say(f"{self.cfg.stage} step {self.state.step}/{self.total} {split}: accuracy "
                         f"{metrics['accuracy']:.4f}, weighted F1 {metrics['weighted_f1']:.4f}", self.progress)
        # a model whose dev outputs are not finite is never the best one, whatever argmax makes of them
        finite = "dev" in results and bool(np.isfinite(results["dev"][1].outputs).all())
        scores = [results["dev"][0]["weighted_f1"] if finite else -1.0]
        dist.broadcast_object_list(scores, src=0)
        improved = "dev" in self.eval_loaders and scores[0] > self.state.best_f1
        if improved:
            self.state.best_f1 = scores[0]
            self.state.best_tag = checkpoint.tag_for(self.state.step)
            self.state.best_metrics = {s: r[0] for s, r in results.items()}
            self._save()
            checkpoint.mark_best(self.ckpt_dir, self.state.best_tag)
        if self.rank == 0:
            for split, (_, out, preds) in results.items():
                rows = prediction_rows(self.stage, out, preds)
                if improved:
                    self._write_predictions(self.out / "predictions" / f"{split}.jsonl", rows)
                if last:
                    self._write_predictions(self.out / "predictions" / "last" / f"{split}.jsonl", rows)
        return {s: r[0] for s, r in results.items()}

    @staticmethod
    def _write_predictions(path: Path, rows: list[dict[str, Any]]) -> None:
        atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in rows))

    # -- checkpoints ---------------------------------------------------------------------------------
    def _save(self) -> None:
        if self.last_saved == self.state.step:
            return
        client = {"state": {**vars(self.state), "skipped": list(self.state.skipped)}, "config": self.cfg.to_dict()}
        checkpoint.save(self.engine, self.ckpt_dir, self.state.step, client, self.cfg.train.keep_last,
                        self.state.best_tag, self.stage.frozen_source())
        self.last_saved = self.state.step
