"""GPU check: what one GPU does at the paper's sizes, in one table, for the first GPU lent to this work.

No GPU has been lent yet, so every figure in docs/benchmarks.md is a CPU's. This script is prepared so that one
short run on one H100/H200 (under 8 minutes, rows time-boxed) answers the open GPU questions at once:

- text: the text stage's model at roberta-large's shapes (random weights) at configs/meld/text.yaml's batch and
  ``text.max_length``, bf16 autocast, AdamW: samples/s, tokens/s, TFLOP/s and MFU (FLOPs measured and MFU taken
  by :mod:`m2fdist.training.throughput`, against its ``PEAK_TFLOPS``);
- 8B LoRA ZeRO-3: configs/meld/text_llm.yaml's text stage at Qwen3-8B's shapes (random bf16 weights built on the
  GPU), LoRA r16 on every projection and activation checkpointing (``TextModel.prepare_finetune``), one DeepSpeed
  ZeRO-3 engine of world size 1 (configs/ds/zero3.json filled in by ``deepspeed_config``): tokens/s;
- fusion: M2FNet's dialog level at configs/meld/fusion.yaml's sizes (N = 1, m = 5, D_T/D_A/D_V = 1024/300/600),
  its batch of dialogs of 10 utterances (MELD's mean is 9.6): dialogs/s;
- faces: the face pass's MTCNN (``FaceDetector.scored_clips``, as ``m2fdist faces`` calls it) on the visual
  batch's clips (15 frames at the packed 320x180, the synthetic corpus's faces): utterances/s;
- audio, visual: the extractor stages' training step (their own loss: triplets mined in the batch, VICReg
  terms, CE heads) on a batch from their own loader at configs/meld/{audio,visual}.yaml's sizes, face boxes
  found once beforehand (as a face set gives them): samples/s;
- loader: the CPU the loader spends per utterance (decord from packed shards + collate, in-process, each
  stage's members and frames) times what that extractor step consumes per second: loader cores a GPU needs.

The synthetic corpus (``m2fdist.synth``, packed by ``m2fdist.pack``) is made in a temporary folder first.
Each row runs warm-up steps, then timed steps until ``--steps`` or ``--budget`` seconds, the device synchronised
after each; memory is the row's peak allocated on the GPU (on CPU: the process's peak RSS so far). Rows left
when ``--deadline`` has passed are recorded as skipped. ``--tiny`` runs every row at tiny shapes through the
same code, on CPU in about a minute (tests/bench/test_gpu_check.py).

The GPU image lacks deepspeed, webdataset and decord. Wheels of uv.lock's versions for the image's Python
(3.12 below; ``python3 -V`` there) go into wheels/ (git-ignored), made here once with the Makefile's pip and uv
(.venv has no pip of its own); pip takes a platform wheel only for the tags named, hence the list:

    .tools/bin/pip download --no-deps --only-binary=:all: --python-version 3.12 -d wheels \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        decord2==3.4.0 webdataset==1.0.2 braceexpand==0.1.7 hjson==3.1.0 py-cpuinfo==9.0.0 msgpack==1.2.4 \\
        ninja==1.13.2 einops==0.8.2
    .tools/bin/pip download --no-deps --no-binary=:all: -d wheels/sdist deepspeed==0.19.8
    DS_BUILD_OPS=0 .tools/bin/uv build --wheel --no-build-isolation --python .venv/bin/python -o wheels \\
        wheels/sdist/deepspeed-0.19.8.tar.gz

deepspeed is an sdist whose setup.py imports torch (hence the venv's Python, without isolation); with
DS_BUILD_OPS=0 it compiles no op (it builds them at run time), so no CUDA is needed and the wheel is
py3-none-any (2 MB; 29 MB in all, 26 of them decord2's). The device tool carries wheels/ with the working tree
(``carry=["wheels"]``, 64 MiB at most); there:

    pip install --no-index --find-links wheels deepspeed==0.19.8 webdataset==1.0.2 decord2==3.4.0
    PYTHONPATH=$PWD python bench/gpu_check.py --json $OUT/gpu.json

(``--no-index --find-links`` takes what the image lacks from wheels/ and stops, naming it, when a dependency is
in neither: add that wheel the same way.) The script checks its imports before it starts, so a missing package
costs seconds, not the lease.

    .venv/bin/python bench/gpu_check.py --tiny [--json FILE]        # CPU, tiny shapes, about a minute
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
NEEDS = ("deepspeed", "webdataset", "decord", "transformers", "peft", "facenet_pytorch", "omegaconf", "skimage")
# Qwen3-8B's shapes (configs/meld/text_llm.yaml's model); the weights are random
QWEN3_8B = {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960,
            "rope_theta": 1e6, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
DIMS = {"paper": (1024, 300, 600), "tiny": (32, 16, 32)}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Every row's shapes: the paper's, read from the MELD configs, or ``--tiny``'s."""
    configs: dict[str, tuple[str, list[str]]]  # row → (config, overrides)
    roberta: dict[str, int]  # overrides of roberta-large's shapes
    decoder: dict[str, Any]  # Qwen3Config
    dialog_len: int  # utterances per dialog in the fusion batch
    train_dialogs: int  # of the synthetic corpus


PAPER = Sizes(
    configs={"text": ("configs/meld/text.yaml", []), "llm": ("configs/meld/text_llm.yaml", []),
             "fusion": ("configs/meld/fusion.yaml", []), "audio": ("configs/meld/audio.yaml", []),
             "visual": ("configs/meld/visual.yaml", ["visual.face_init=none", "visual.scene_init=none"])},
    roberta={}, decoder=QWEN3_8B, dialog_len=10, train_dialogs=14)
TINY = Sizes(
    configs={"text": ("configs/meld/text.yaml", ["data.batch_size=2", "text.max_length=32"]),
             "llm": ("configs/meld/text_llm.yaml", ["data.batch_size=2", "text.max_length=32"]),
             "fusion": ("configs/tiny/fusion.yaml", []),
             "audio": ("configs/tiny/audio.yaml", ["data.batch_size=4"]),
             "visual": ("configs/tiny/visual.yaml", ["data.batch_size=2", "data.num_frames=2"])},
    roberta={"vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 128},
    decoder={"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": False},
    dialog_len=5, train_dialogs=3)


def missing_modules() -> list[str]:
    """The imports the rows need that this Python lacks (checked first: a GPU lease is short)."""
    return [m for m in NEEDS if importlib.util.find_spec(m) is None]


def count(n: float) -> str:
    """A parameter count for the table: 8.19 B, 65.6 M, 12.3 k."""
    return next(f"{n / d:.3g} {u}" for d, u in ((1e9, "B"), (1e6, "M"), (1e3, "k"), (1, "")) if n >= d or d == 1)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@dataclasses.dataclass
class Box:
    """A row's time box: ``warmup`` untimed steps, then timed ones until ``steps`` or ``budget`` seconds (>= 2)."""
    warmup: int
    steps: int
    budget: float

    def run(self, step: Callable[[], Any], dev: torch.device) -> tuple[int, float]:
        """(timed steps, their seconds); the device is synchronised after each step, so none spills over."""
        for _ in range(self.warmup):
            step()
        sync(dev)
        n, t0 = 0, time.perf_counter()
        while n < self.steps and (n < 2 or time.perf_counter() - t0 < self.budget):
            step()
            sync(dev)
            n += 1
        return n, time.perf_counter() - t0


@contextmanager
def peak_memory(dev: torch.device) -> Iterator[dict[str, float]]:
    """The block's peak memory in MB: allocated on the GPU, or the process's peak RSS so far on CPU."""
    out: dict[str, float] = {}
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    yield out
    if dev.type == "cuda":
        out["memory_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        out["memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def corpus(work: Path, dialogs: int) -> Path:
    """A synthetic MELD corpus at the packed size (320x180: what the loader and the face pass decode), packed."""
    from m2fdist.pack import PackOptions, pack
    from m2fdist.synth import synth_meld

    shards = work / "shards"
    if not (shards / "index.json").is_file():
        workers = max(1, min(8, (os.cpu_count() or 2) // 2))
        synth_meld(work / "MELD.Raw", dialogs, seed=0, size=(320, 180), workers=workers, progress=False,
                   dev_dialogs=1, test_dialogs=1)
        pack("meld", work / "MELD.Raw", shards, workers=workers, options=PackOptions(max_side=320), progress=False)
    return shards


def configs(sizes: Sizes, shards: Path) -> dict[str, Any]:
    """Each row's run config, checked against the synthetic shards (fusion's: as written, its widths given)."""
    from m2fdist.config.load import load_config, read_config

    common = [f"data.shards={shards}", "wandb.mode=disabled", "data.num_workers=0"]
    out = {}
    for row, (path, extra) in sizes.configs.items():
        if row == "fusion":  # its shards would be extracted features: the widths are given instead
            t, a, v = DIMS["tiny" if sizes is TINY else "paper"]
            dims = [f"fusion.dim_text={t}", f"fusion.dim_audio={a}", f"fusion.dim_visual={v}"]
            out[row] = read_config(ROOT / path, [*common, *dims, *extra])
        else:
            out[row] = load_config(ROOT / path, [*common, *extra])
        if not Path(out[row].deepspeed).is_absolute():  # the JSON is read relative to the working directory
            out[row].deepspeed = str(ROOT / out[row].deepspeed)
    return out


def train_rates(model: torch.nn.Module, loss: Callable[[], torch.Tensor], batch: dict[str, Any],
                dev: torch.device, box: Box) -> dict[str, float]:
    """AdamW steps on ``loss`` under bf16 autocast: samples/s, tokens/s, TFLOP/s, MFU (throughput.py's)."""
    from m2fdist.training.throughput import rates, run_peak, train_flops_per_unit, units
    from m2fdist.training.trainer import adamw  # the trainer's optimizer (fused where torch has the kernel)

    opt = adamw([{"params": [p for p in model.parameters() if p.requires_grad]}], 1e-6)

    def forward() -> torch.Tensor:
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            return loss()

    def step() -> None:
        forward().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    # Counted in eval mode without gradients, where nn.TransformerEncoderLayer takes its fused fast path, one
    # kernel the counter does not see into (as in model_bench.py): the unfused ops are counted instead.
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        flops = train_flops_per_unit(forward, model, batch)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    n, seconds = box.run(step, dev)
    samples, tokens = units(batch)
    return rates(flops, samples * n, tokens * n, seconds, 1, run_peak(dev, "bf16", None))


def text_row(cfg: Any, sizes: Sizes, dev: torch.device, box: Box) -> dict[str, Any]:
    """The text stage's loss and step at roberta-large's shapes, every sequence at ``text.max_length``."""
    from model_bench import roberta_large

    from m2fdist.training.stages import TextStage

    torch.manual_seed(0)
    model = roberta_large(str(dev), **sizes.roberta).train()
    b, length = cfg.data.batch_size, min(cfg.text.max_length, model.max_length)
    ids = torch.randint(3, model.encoder.config.vocab_size, (b, length))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.arange(b) % 7}
    stage = TextStage(cfg)
    r = train_rates(model, lambda: stage.loss(model, batch), batch, dev, box)
    layers, hidden = model.encoder.config.num_hidden_layers, model.encoder.config.hidden_size
    return {"shapes": f"{b} × {length} tokens, {layers} layers × {hidden}, bf16 autocast", "metric": "samples/s",
            "value": r["samples_per_s"], **r}


def lora_zero3_row(cfg: Any, sizes: Sizes, dev: torch.device, box: Box) -> dict[str, Any]:
    """One DeepSpeed ZeRO-3 engine (world size 1) over the LoRA text stage of an 8B-shaped decoder."""
    import deepspeed
    from transformers import Qwen3Config

    from m2fdist.models.pretrained import build_encoder
    from m2fdist.models.text import TextModel, model_kwargs
    from m2fdist.runtime.deepspeed_config import deepspeed_config
    from m2fdist.runtime.process import init_distributed, single_process_env
    from m2fdist.training.stages import TextStage
    from m2fdist.training.throughput import rates, run_peak, train_flops_per_unit, units
    from m2fdist.training.trainer import adamw

    single_process_env()
    init_distributed()
    torch.manual_seed(0)
    config = Qwen3Config(**sizes.decoder)
    with torch.device(dev):  # random bf16 weights made where they run: no 16 GB copy from the host
        model = TextModel(build_encoder(config, **model_kwargs(cfg.text, config)), None, cfg.text, cfg.label_names)
    model.prepare_finetune()  # LoRA (peft) and activation checkpointing, as the stage does
    stage = TextStage(cfg)
    ds, precision = deepspeed_config(cfg, 1)
    optimizer = adamw(stage.param_groups(model), cfg.train.lr)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds)
    b, length = cfg.data.batch_size, model.max_length
    ids = torch.randint(3, config.vocab_size, (b, length))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.arange(b) % 7}

    def step() -> None:
        engine.backward(stage.loss(engine, batch))
        engine.step()

    flops = train_flops_per_unit(lambda: stage.loss(engine, batch), engine.module, batch)
    n, seconds = box.run(step, dev)
    samples, tokens = units(batch)
    r = rates(flops, samples * n, tokens * n, seconds, 1, run_peak(dev, precision.dtype, None))
    every = [(getattr(p, "ds_numel", p.numel()), p.requires_grad) for p in engine.module.parameters()]  # ZeRO-3's
    params, trained = sum(n for n, _ in every), sum(n for n, g in every if g)
    return {"shapes": f"{count(params)} params ({count(trained)} trained, LoRA r{cfg.text.lora.r}), "
                      f"{b} × {length} tokens, {precision.dtype}, activation checkpointing",
            "metric": "tokens/s", "value": r["tokens_per_s"], **r}


def fusion_row(cfg: Any, sizes: Sizes, dev: torch.device, box: Box) -> dict[str, Any]:
    """The fusion stage's loss and step: the dialog level over random features of the configured widths."""
    from m2fdist.models.build import build_model
    from m2fdist.training.stages import FusionStage

    torch.manual_seed(0)
    stage = FusionStage(cfg)
    with torch.device(dev):
        model = build_model("fusion", cfg, len(stage.names)).train()
    f, b, k = cfg.fusion, cfg.data.batch_size, sizes.dialog_len
    batch = {"mask": torch.ones(b, k, dtype=torch.bool), "labels": torch.arange(b * k).reshape(b, k) % 7,
             "text": torch.randn(b, k, f.dim_text), "audio": torch.randn(b, k, f.dim_audio),
             "visual": torch.randn(b, k, f.dim_visual)}
    r = train_rates(model, lambda: stage.loss(model, batch), batch, dev, box)
    params = count(sum(p.numel() for p in model.parameters()))
    return {"shapes": f"{b} dialogs × {k} utterances, D_T/D_A/D_V {f.dim_text}/{f.dim_audio}/{f.dim_visual}, "
                      f"N={f.num_layers}, m={f.num_fusion_layers}, {params} params", "metric": "dialogs/s",
            "value": r["samples_per_s"], **r}


class StoredBoxes:
    """Stands in for a face set (``FaceSet.boxes``): the boxes found once for the batch, as ``m2fdist faces``
    would have stored them, so the visual step runs no MTCNN (the stage's path with a face set)."""
    def __init__(self, boxes: list[list[torch.Tensor]]):
        self.found = boxes

    def boxes(self, keys: list[str], frame_hw: torch.Tensor, min_prob: float,
              device: torch.device | str = "cpu") -> list[list[torch.Tensor]]:
        return [[b.to(device) for b in clip] for clip in self.found]


def stage_batch(stage: Any) -> dict[str, Any]:
    """The first batch of the stage's own train loader (evaluation order), on the CPU as the loader gives it."""
    return next(iter(stage.loader(stage.cfg.data.train_split, False, 0, 1)))


def faces_row(visual: Any, batch: dict[str, Any], dev: torch.device, box: Box) -> dict[str, Any]:
    """MTCNN over the visual batch's clips, each at its real size, as the face pass runs it."""
    from m2fdist.models.visual import FaceDetector

    detector = FaceDetector(min_prob=0.0, min_face_size=visual.min_face_size)  # the face pass's settings
    clips = [batch["frames"][i, :, :h, :w] for i, (h, w) in enumerate(batch["frame_hw"].tolist())]
    n, seconds = box.run(lambda: detector.scored_clips(clips, dev), dev)
    found = detector.scored_clips(clips[:1], dev)
    t, h, w = clips[0].shape[:3]
    faces = sum(len(b) for b, _ in found[0])
    return {"shapes": f"{len(clips)} clips × {t} frames {w}x{h} ({faces} faces in clip 0's {t} frames)",
            "metric": "utterances/s", "value": len(clips) * n / seconds}


def extractor_row(stage: Any, batch: dict[str, Any], dev: torch.device, box: Box) -> dict[str, Any]:
    """An extractor stage's loss and step on a batch of its own loader (visual: boxes found beforehand)."""
    from m2fdist.models.visual import VisualExtractor

    torch.manual_seed(0)
    with torch.device(dev):
        model = stage.build_model().train()
    if isinstance(model, VisualExtractor):
        found = StoredBoxes(model.detect(batch["frames"].to(dev), batch["frame_hw"]))
        stage.face_set = lambda: found  # this stage object only: the batch's boxes, found once
    r = train_rates(model, lambda: stage.loss(model, batch), batch, dev, box)
    b = len(batch["labels"])
    if stage.name == "audio":
        c = stage.cfg.audio
        shapes = f"{b} clips × {c.seconds:g} s, {c.n_mels} mels, {c.embed_dim}-d"
    else:
        c, t, h, w = stage.cfg.visual, *batch["frames"].shape[1:4]
        shapes = f"{b} × {t} frames {w}x{h}, face {c.face_size} / scene {c.scene_size} px, {c.embed_dim}-d"
    return {"shapes": shapes + ", bf16 autocast", "metric": "samples/s", "value": r["samples_per_s"], **r}


def loader_row(stage: Any, gpu_rate: float, repeat: int) -> dict[str, Any]:
    """CPU seconds the stage's loader spends per utterance (decode + collate, in-process, batch 8, best of
    ``repeat``) times the utterances/s its training step takes on this device: the loader cores it needs."""
    from loader_bench import measure

    from m2fdist.data import make_loader

    config = dataclasses.replace(stage.loader_config(False), batch_size=8, num_workers=0)
    cpu = float("inf")
    for _ in range(repeat):
        loader = make_loader(stage.cfg.data.shards, stage.cfg.data.train_split, config, 0, 1)
        cpu = min(cpu, measure(loader, lambda b: int(b["valid"].sum()))[1])
    members = "+".join(m for m in config.members if m != "json")
    frames = f", {config.num_frames} frames" if "mp4" in config.members else ""
    return {"shapes": f"{members}{frames}, batch 8, {cpu:.2f} CPU ms/utt × {gpu_rate:.1f} utt/s of the step",
            "metric": "loader cores a GPU needs", "value": cpu / 1000 * gpu_rate, "cpu_ms_per_utt": cpu,
            "step_samples_per_s": gpu_rate}


ROWS = {"text": "text stage (roberta-large shapes)", "llm": "8B LoRA ZeRO-3 (Qwen3-8B shapes)",
        "fusion": "fusion (M2FNet dialog level, paper sizes)", "faces": "face pass (MTCNN)",
        "audio": "audio extractor step", "visual": "visual extractor step",
        "loader_audio": "loader CPU → audio step", "loader_visual": "loader CPU → visual step"}


def plan(sizes: Sizes, cfgs: dict[str, Any], dev: torch.device, box: Box, llm_box: Box,
         done: dict[str, dict[str, Any]]) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
    """The rows in the order they run: the 8B engine last, so its 16 GB stay out of the others' peaks."""
    from m2fdist.training.stages import AudioStage, VisualStage

    audio, visual = AudioStage(cfgs["audio"]), VisualStage(cfgs["visual"])
    batches: dict[str, dict[str, Any]] = {}

    def batch(stage: Any) -> dict[str, Any]:
        if stage.name not in batches:
            batches[stage.name] = stage_batch(stage)
        return batches[stage.name]

    return [
        ("text", lambda: text_row(cfgs["text"], sizes, dev, box)),
        ("fusion", lambda: fusion_row(cfgs["fusion"], sizes, dev, box)),
        ("faces", lambda: faces_row(cfgs["visual"].visual, batch(visual), dev, box)),
        ("audio", lambda: extractor_row(audio, batch(audio), dev, box)),
        ("visual", lambda: extractor_row(visual, batch(visual), dev, box)),
        ("loader_audio", lambda: loader_row(audio, done["audio"]["value"], 3)),
        ("loader_visual", lambda: loader_row(visual, done["visual"]["value"], 3)),
        ("llm", lambda: lora_zero3_row(cfgs["llm"], sizes, dev, llm_box)),
    ]


def run_rows(rows: list[tuple[str, Callable[[], dict[str, Any]]]], dev: torch.device, start: float,
             deadline: float, done: dict[str, dict[str, Any]]) -> None:
    """Each row with its peak memory and seconds into ``done``; one row's failure is its row, not the run's end
    (a GPU lease is short), and rows left after ``deadline`` seconds are recorded as skipped."""
    import traceback

    for key, fn in rows:
        t0 = time.perf_counter()
        if t0 - start > deadline:
            done[key] = {"skipped": f"--deadline {deadline:g} s had passed"}
            continue
        try:
            with peak_memory(dev) as mem:
                row = fn()
            row.update(mem)
        except Exception as e:  # noqa: BLE001 (recorded in the row, with its traceback on stderr)
            traceback.print_exc()
            row = {"error": f"{type(e).__name__}: {e}"[:400]}
        row["seconds"] = round(time.perf_counter() - t0, 2)
        done[key] = row
        print(f"gpu_check: {key} done in {row['seconds']:.1f} s", file=sys.stderr, flush=True)


def _num(x: float | None, fmt: str = "{:.2f}") -> str:
    return "—" if x is None else fmt.format(x)


def table(done: dict[str, dict[str, Any]], dev: torch.device, tiny: bool) -> str:
    """The one markdown table: a row per measurement, in the order of the module docstring."""
    where = "GPU peak allocated" if dev.type == "cuda" else "peak RSS so far"
    lines = [f"| row | shapes | metric | value | TFLOP/s | MFU | memory ({where}) |", "|---|---|---|---|---|---|---|"]
    for key, name in ROWS.items():
        r = done.get(key, {"skipped": "not run"})
        name = f"{name}, tiny" if tiny else name
        if "value" not in r:
            lines.append(f"| {name} | — | {r.get('error') or r.get('skipped')} | — | — | — | — |")
            continue
        mfu = _num(r.get("mfu") and 100 * r["mfu"], "{:.1f} %")
        value = _num(r["value"], "{:.3g}" if r["value"] < 100 else "{:.0f}")
        tflops = _num(r.get("tflops_per_device"), "{:.3g}")
        mem = _num(r.get("memory_mb") and r["memory_mb"] / 1024, "{:.2f} GB")
        lines.append(f"| {name} | {r['shapes']} | {r['metric']} | {value} | {tflops} | {mfu} | {mem} |")
    return "\n".join(lines)


def describe(dev: torch.device) -> dict[str, Any]:
    from loader_bench import cpu_name

    from m2fdist.training.throughput import peak_tflops

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return {"device": name, "cpu": f"{cpu_name()}, {os.cpu_count()} cores", "torch": torch.__version__,
            "cuda": torch.version.cuda, "peak_tflops_bf16": peak_tflops(dev, "bf16")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny shapes for every row (CPU, about a minute)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    p.add_argument("--json", type=Path, default=None, help="write the rows here too")
    p.add_argument("--work", type=Path, default=None, help="keep the synthetic corpus here (default: a temp dir)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row (default 20; --tiny 3)")
    p.add_argument("--budget", type=float, default=20.0, help="seconds of timed steps per row, at most")
    p.add_argument("--deadline", type=float, default=420.0, help="rows not started by then are skipped")
    args = p.parse_args(argv)
    if missing := missing_modules():
        p.error(f"missing {', '.join(missing)}: install the carried wheels first (see the docstring)")
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is first imported
    sizes = TINY if args.tiny else PAPER
    steps = args.steps or (3 if args.tiny else 20)
    box, llm_box = Box(1 if args.tiny else 3, steps, args.budget), Box(1 if args.tiny else 2, steps, args.budget)
    start = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="m2fdist-gpu-check-"))
    done: dict[str, dict[str, Any]] = {}
    try:
        cfgs = configs(sizes, corpus(work, sizes.train_dialogs))
        print(f"gpu_check: corpus and configs in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        run_rows(plan(sizes, cfgs, dev, box, llm_box, done), dev, start, args.deadline, done)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - start
    info = {**describe(dev), "tiny": args.tiny, "wall_s": round(wall, 1)}
    print(f"\n{info['device']} ({info['cpu']}), torch {info['torch']}, {'--tiny, ' if args.tiny else ''}"
          f"wall {wall:.0f} s\n\n{table(done, dev, args.tiny)}")
    if args.json:
        rows = [{"row": k, "name": n + (", tiny" if args.tiny else ""), **done.get(k, {"skipped": "not run"})}
                for k, n in ROWS.items()]
        args.json.write_text(json.dumps({**info, "rows": rows}, indent=1, default=str) + "\n")
    bad = [k for k in ROWS if not math.isfinite(done.get(k, {}).get("value", math.nan))]
    from m2fdist.runtime.process import shutdown

    shutdown(0)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
