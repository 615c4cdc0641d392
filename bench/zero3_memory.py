"""Per-rank memory of the LoRA text stage under ZeRO-3, built partitioned: a random decoder at an LLM's shapes.

Run on a CPU machine (``DS_ACCELERATOR=cpu``) or a GPU node::

    .venv/bin/python bench/zero3_memory.py --sizes tiny,8B --steps 2 --json /tmp/z3.json

For each size it launches 2 ranks (the ``deepspeed`` launcher, ``--ranks``) of this same file. Each rank builds
configs/meld/text_llm.yaml's text model (LoRA r16 on every projection, activation checkpointing, bf16, ZeRO-3)
around a decoder of that size with random weights, under ``HfDeepSpeedConfig`` so transformers builds it
inside ``deepspeed.zero.Init`` (the run's path when ``text.partition_at_load`` is on), then trains ``--steps``
steps of ``--tokens`` tokens with the stage's loss. A thread samples the rank's anonymous resident memory (what
it holds of the model: nothing here is a mapped file) every 20 ms, by phase. The table gives each rank's peak
against the whole model's bytes, and the bound the stage is held to: peak ≤ 0.6 × the model's bytes + the peak
of the tiny size (what a rank costs with next to no model: torch, transformers, DeepSpeed, buffers).

Sizes are Qwen3's (random weights; only the shapes matter). On a 24 GB machine: 8B fits; 14B does not (its bf16
partitions alone, 2 × 14.8 GB, exceed the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
_QWEN3 = {"vocab_size": 151936, "head_dim": 128, "max_position_embeddings": 40960, "rope_theta": 1e6,
          "rms_norm_eps": 1e-6}
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": False},
    "0.6B": {**_QWEN3, "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
             "num_attention_heads": 16, "num_key_value_heads": 8, "tie_word_embeddings": True},
    "4B": {**_QWEN3, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
           "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": True},
    "8B": {**_QWEN3, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
           "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False},
    "14B": {**_QWEN3, "hidden_size": 5120, "intermediate_size": 17408, "num_hidden_layers": 40,
            "num_attention_heads": 40, "num_key_value_heads": 8, "tie_word_embeddings": False},
}
BOUND = 0.6  # of the whole model's bytes, over the tiny size's peak


class Sampler:
    """This process's anonymous resident memory (MB): the peak of each phase, sampled every 20 ms, and where the
    main thread was when it was reached (its innermost frames): what holds the memory, not a guess."""

    def __init__(self) -> None:
        self.phase, self.peaks, self.where = "start", {}, {}
        self.main = threading.get_ident()
        threading.Thread(target=self._loop, daemon=True).start()

    @staticmethod
    def anon_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def _loop(self) -> None:
        while True:
            self.mark()
            time.sleep(0.02)

    def mark(self, phase: str | None = None) -> None:
        value = self.anon_mb()
        if value > self.peaks.get(self.phase, 0.0):
            self.peaks[self.phase] = value
            frame = sys._current_frames().get(self.main)
            if frame is not None and phase is None:
                frames = traceback.StackSummary.extract(traceback.walk_stack(frame), lookup_lines=False)
                # innermost last; no source lines read (linecache would hold whole files: memory it measures)
                self.where[self.phase] = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[7::-1]]
        if phase:
            self.phase = phase
            self.peaks[phase] = value


def worker(size: str, steps: int, tokens: int, out: Path, share: int | None = None) -> None:
    """One rank: build the partitioned LoRA model, train ``steps`` steps, write this rank's phase peaks."""
    sampler = Sampler()
    import deepspeed
    from transformers import Qwen3Config

    from m2fdist.config.load import read_config
    from m2fdist.models.pretrained import build_encoder
    from m2fdist.models.text import TextModel, model_kwargs
    from m2fdist.runtime import deepspeed_config as ds_settings
    from m2fdist.runtime.process import init_distributed, return_freed_memory, trim_freed_memory
    from m2fdist.runtime.zero3_embedding import shard_frozen_embeddings
    from m2fdist.training.stages import TextStage
    from m2fdist.training.trainer import adamw

    init_distributed()
    return_freed_memory()
    cfg = read_config(ROOT / "configs/meld/text_llm.yaml", ["data.batch_size=1", "text.lora.dropout=0.0",
                                                                 f"deepspeed={ROOT / 'configs/ds/zero3.json'}"])
    ds, precision = ds_settings.deepspeed_config(cfg, int(os.environ["WORLD_SIZE"]))
    config = Qwen3Config(**SIZES[size])
    torch.manual_seed(0)
    sampler.mark("build")
    keep = ds_settings.partition_at_load(ds)  # noqa: F841 (alive while transformers builds the model)
    model = TextModel(build_encoder(config, **model_kwargs(cfg.text, config)), None, cfg.text, cfg.label_names)
    model.prepare_finetune()
    ds_settings.cast_unpartitioned(model, ds)
    every = [(getattr(p, "ds_numel", p.numel()), p.requires_grad, p.element_size()) for p in model.parameters()]
    shard_frozen_embeddings(model)  # as the run does: a frozen embedding looked up from the partitions
    ds_settings.cap_stage3_gathers(ds, sum(n for n, _, _ in every), share or ds_settings.GATHERED_SHARE)
    sampler.mark("initialize")
    stage = TextStage(cfg)
    engine, *_ = deepspeed.initialize(model=model, optimizer=adamw(stage.param_groups(model), cfg.train.lr),
                                      config=ds)
    ids = torch.randint(3, config.vocab_size, (1, tokens))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([1])}
    losses, seconds = [], []
    for step in range(steps):
        sampler.mark(f"step {step + 1}")
        start = time.perf_counter()
        loss = stage.loss(engine, batch)
        engine.backward(loss)
        engine.step()
        trim_freed_memory()
        seconds.append(time.perf_counter() - start)
        losses.append(float(loss))
    sampler.mark("end")
    record = {"size": size, "rank": engine.global_rank, "params": sum(n for n, _, _ in every),
              "trained": sum(n for n, g, _ in every if g), "precision": precision.dtype,
              "base_bytes": sum(n * e for n, g, e in every if not g), "losses": losses, "seconds": seconds,
              "phase_peak_mb": {k: round(v, 1) for k, v in sampler.peaks.items()}, "peak_where": sampler.where,
              "peak_mb": round(max(sampler.peaks.values()), 1)}
    (out / f"{size}.rank{engine.global_rank}.json").write_text(json.dumps(record))


def launch(size: str, args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    """Both ranks of one size under the deepspeed launcher; their records."""
    from m2fdist.runtime.process import free_port

    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(args.ranks), "--master_port",
           str(args.port or free_port()), __file__, "--worker", size, "--steps", str(args.steps), "--tokens",
           str(args.tokens), "--out", str(out), *(["--gathered-share", str(args.gathered_share)]
                                                   if args.gathered_share else [])]
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"), "OMP_NUM_THREADS": "1"}
    log = out / f"{size}.log"
    with log.open("w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        sys.exit(f"{size}: the launch exited {rc}; its log: {log}")
    return [json.loads((out / f"{size}.rank{r}.json").read_text()) for r in range(args.ranks)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="tiny,8B", help=f"comma-separated, of {', '.join(SIZES)}; tiny first")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--tokens", type=int, default=64, help="tokens of the one sample per rank and step")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--gathered-share", type=int, help="ZeRO-3 may keep 1/N of the model gathered (default: the "
                   "run's, m2fdist.runtime.deepspeed_config.GATHERED_SHARE)")
    p.add_argument("--json", type=Path, help="write every size's records here")
    p.add_argument("--out", type=Path, default=Path("/tmp/zero3_memory"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.steps, args.tokens, args.out, args.gathered_share)
    sizes = args.sizes.split(",")
    unknown = [s for s in sizes if s not in SIZES]
    if unknown or sizes[0] != "tiny":
        p.error(f"--sizes: {unknown or sizes} (known: {', '.join(SIZES)}; tiny first, the baseline)")
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for size in sizes:
        t0 = time.time()
        runs[size] = launch(size, args, args.out)
        print(f"{size}: {time.time() - t0:.0f} s", file=sys.stderr)
    base = max(r["peak_mb"] for r in runs["tiny"])
    print(f"{'size':6} {'params':>8} {'model MB':>9} {'peak/rank MB':>13} {'over tiny':>10} {'ratio':>6} "
          f"{'bound':>6}  s/step  losses")
    rows = []
    for size, ranks in runs.items():
        peak, model_mb = max(r["peak_mb"] for r in ranks), ranks[0]["base_bytes"] / 2**20
        ratio = (peak - base) / model_mb if size != "tiny" else float("nan")
        rows.append({"size": size, "model_mb": model_mb, "peak_mb": peak, "ratio": ratio, "ranks": ranks})
        print(f"{size:6} {ranks[0]['params'] / 1e9:7.2f}B {model_mb:9.0f} {peak:13.0f} {peak - base:10.0f} "
              f"{ratio:6.3f} {BOUND:6.2f}  {sum(ranks[0]['seconds']) / len(ranks[0]['seconds']):6.1f}  "
              f"{[round(x, 4) for x in ranks[0]['losses']]}")
    if args.json:
        args.json.write_text(json.dumps({"cpu": _cpu(), "command": " ".join(sys.argv), "rows": rows}, indent=1))


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
