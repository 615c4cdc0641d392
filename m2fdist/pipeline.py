"""The pipeline (``m2fdist pipeline``): pack → text → audio → visual → extract → fusion (+ ablations) → report.

With ``modalities: text`` it packs the annotations alone and runs text → extract (the text stage's utterance
vectors) → fusion with the text modality alone (M2FNet's dialog level: the dialog Transformer with its skip
connection and the classifier) → report, which gives both rows, the text stage alone and with the dialog level;
``dialog_level: false`` stops after the text stage.

Each stage is one deepspeed launch with the configured number of processes. A stage whose output is
complete (its ``final.json``, an export, a features index) is skipped if it was made from what is there now
(:mod:`m2fdist.format.lineage`: a retrained text stage's new export makes extraction, fusion and the ablations
run again, and the console says why); an interrupted stage is launched again with ``resume=auto`` and
continues from its last checkpoint. A stage's whole output goes to its
``.log``; its progress and evaluation lines are shown on the console as they come, prefixed with its name.

With ``seeds=[0,1,2]`` the training stages (and extraction, which reads their models) run once per seed
(``train.seed``) into ``RUNS/seedN`` and ``FEATURES/seedN``; packing is done once, and the report gives
every ablation row as mean ± std over the seeds with each seed's value.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m2fdist.common.errors import RunFailed
from m2fdist.common.modalities import NAMES, STAGES
from m2fdist.common.modalities import PACKED as MODALITIES
from m2fdist.common.progress import TAGS
from m2fdist.config.errors import ConfigError
from m2fdist.config.load import merge
from m2fdist.config.trial import SWEEP_ENV
from m2fdist.data.texts import shard_texts
from m2fdist.format.exports import is_export
from m2fdist.format.lineage import MADE_FROM, changes, export_id, read_record, shards_id, write_record
from m2fdist.inference.export import export
from m2fdist.models.tiny_text import build_tiny_roberta
from m2fdist.pack import PackOptions, pack
from m2fdist.results.bundle import write_bundle
from m2fdist.results.report import write_report, write_seed_report
from m2fdist.runtime.devices import resolve_device
from m2fdist.runtime.launcher import launch_command

ROOT = Path(__file__).resolve().parents[1]
# The paper's modality ablation rows, as fusion-stage overrides.
ABLATIONS: dict[str, list[str]] = {
    "T": ["fusion.modalities=T", "fusion.fusion=concat"],
    "A": ["fusion.modalities=A", "fusion.fusion=concat"],
    "V": ["fusion.modalities=V", "fusion.fusion=concat"],
    "TAV_concat": ["fusion.modalities=TAV", "fusion.fusion=concat"],
}


@dataclass
class PipelineConfig:
    dataset: str = "meld"  # meld or iemocap
    raw: str = ""  # raw tree, packed when the shards are missing
    shards: str = "shards/meld"  # utterance shards (packed from raw when missing)
    features: str = "shards/meld_features"  # dialog feature shards the extract step writes
    runs: str = "runs/meld"  # one folder per stage under it, the bundle (model/) and the report
    num_gpus: int = 1  # processes per stage launch (CPU processes with DS_ACCELERATOR=cpu)
    pack_workers: int = 4  # parallel encoding processes when packing
    max_side: int = 320  # packing re-encodes video so its longer side is at most this
    tiny_text: bool = False  # build a tiny local RoBERTa into runs/roberta (no hub access needed)
    text: str = "configs/meld/text.yaml"  # the text stage's run config
    audio: str = "configs/meld/audio.yaml"  # the audio stage's run config
    visual: str = "configs/meld/visual.yaml"  # the visual stage's run config
    extract: str = "configs/meld/extract.yaml"  # the extraction config
    fusion: str = "configs/meld/fusion.yaml"  # the fusion stage's run config
    overrides: dict[str, list[str]] = field(default_factory=dict)  # per stage: extra key=value
    ablations: bool = True  # also train the T, A, V and concatenation rows of the paper's ablation table
    modalities: str = "text,audio,visual"  # or "text": text-only packing, text stage → dialog level → report
    # text only: also train M2FNet's dialog level (the fusion stage over the text stage's utterance vectors,
    # text alone); false: the text stage's own classifier is the model
    dialog_level: bool = True
    # several seeds: every training stage once per seed in RUNS/seedN (features in FEATURES/seedN), the report
    # as mean ± std over them; empty: one run with the configs' own train.seed, directly in RUNS
    seeds: list[int] = field(default_factory=list)


def seed_plan(cfg: PipelineConfig) -> list[tuple[int, PipelineConfig]]:
    """Each seed's own pipeline config: its runs and features folders, ``train.seed`` for every trained stage."""
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"seeds {cfg.seeds} repeat a seed")
    plan = []
    for seed in cfg.seeds:
        overrides = {k: list(v) for k, v in cfg.overrides.items()}
        for stage in STAGES:
            overrides[stage] = [*overrides.get(stage, []), f"train.seed={seed}"]
        plan.append((seed, dataclasses.replace(cfg, runs=str(Path(cfg.runs) / f"seed{seed}"),
                                               features=str(Path(cfg.features) / f"seed{seed}"), seeds=[],
                                               overrides=overrides)))
    return plan


def load(path: Path, overrides: list[str]) -> PipelineConfig:
    """The pipeline config: the one merge every config goes through (schema ← YAML ← ``key=value``)."""
    return merge(PipelineConfig, path, overrides)


class Pipeline:
    def __init__(self, cfg: PipelineConfig, text_model: Path | None = None):
        if cfg.modalities not in MODALITIES:
            raise ConfigError(f"modalities must be one of {', '.join(MODALITIES)}, not {cfg.modalities!r}")
        seed_plan(cfg)  # a repeated seed is refused before anything runs
        self.cfg = cfg
        self.media = cfg.modalities != "text"  # False: no audio or visual stage
        self.extractors = NAMES if self.media else ("text",)  # the stages trained before the dialog level
        self.runs = Path(cfg.runs)
        self.remade: set[str] = set()  # the shards / features folders (re)written by this run, for old products
        self.text_model = text_model or self.runs / "roberta"  # tiny_text: one for every seed
        # the stages are steps of one run, not sweep trials: each trains into the folder the pipeline names
        # (m2fdist.config.trial would nest it under the agent's ids, where the pipeline's next step never looks)
        self.env = {k: v for k, v in os.environ.items() if k != SWEEP_ENV}
        self.env.setdefault("PYTHONUNBUFFERED", "1")  # stage lines reach the console as they are written
        if resolve_device("auto") == "cpu":  # no GPU here: the launches run on DeepSpeed's CPU accelerator
            self.env.setdefault("DS_ACCELERATOR", "cpu")

    def say(self, message: str) -> None:
        print(f"[pipeline] {message}", file=sys.stderr, flush=True)

    def launch(self, script: str, config: str, overrides: list[str], log: Path) -> None:
        """Run one deepspeed launch (here, or across the SLURM allocation's nodes: :mod:`m2fdist.runtime.launcher`):
        all its output into ``log``, its progress and eval lines also on the console."""
        cmd, env = launch_command(script, ["--config", config, *overrides], self.cfg.num_gpus, self.env)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as f, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                                  stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
            for line in proc.stdout:
                f.write(line)
                f.flush()
                if line.startswith(TAGS):
                    print(f"[{log.stem}] {line.rstrip()}", file=sys.stderr, flush=True)
            rc = proc.wait()
        if rc != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
            raise RunFailed(f"{' '.join(cmd)} failed ({rc}); log: {log}\n{tail}")

    def run(self, report: bool = True) -> Path:
        """Every stage not yet finished, then the report (``report=False``: a seed's run, reported with the rest)."""
        c = self.cfg
        self.pack()
        if c.seeds:
            return self.run_seeds()
        common = [f"data.shards={c.shards}", f"dataset={c.dataset}"]
        text_model = [f"text.model={self.text_model}"] if c.tiny_text else []
        if c.tiny_text and not (self.text_model / "config.json").is_file():
            self.say(f"building a tiny RoBERTa from the shards' text → {self.text_model}")

            build_tiny_roberta(self.text_model, shard_texts(Path(c.shards)), vocab_size=500, hidden_size=32,
                               num_layers=2)
        for stage in self.extractors:
            self.train(stage, getattr(c, stage), [*common, *(text_model if stage == "text" else [])])
            self.export(stage)
        if not self.media and not c.dialog_level:
            return self.report() if report else self.runs
        self.extract()
        self.train("fusion", c.fusion, [f"data.shards={c.features}", f"dataset={c.dataset}",
                                        *([] if self.media else ABLATIONS["T"])])
        self.export("fusion")
        self.bundle()
        if c.ablations and self.media:
            for name, extra in ABLATIONS.items():
                self.train("fusion", c.fusion, [f"data.shards={c.features}", f"dataset={c.dataset}", *extra],
                           out=self.runs / f"fusion_{name}")
        return self.report() if report else self.runs

    def run_seeds(self) -> Path:
        """Every seed's pipeline in its own folders (shards packed once), then the report over the seeds."""
        folders = {}
        for seed, cfg in seed_plan(self.cfg):
            self.say(f"seed {seed}: runs in {cfg.runs}, features in {cfg.features}")
            Pipeline(cfg, text_model=self.text_model).run(report=False)
            folders[seed] = Path(cfg.runs)
        report = write_seed_report(self.runs, folders)
        print((self.runs / "report.md").read_text(), flush=True)
        self.say(f"done: {report} and {self.runs / 'report.md'} over seeds {', '.join(map(str, folders))}")
        return report

    def report(self) -> Path:

        report = write_report(self.runs)
        self.bundle()  # again: the model card now carries the report's scores (text only: the first bundle)
        print((self.runs / "report.md").read_text(), flush=True)
        self.say(f"done: {report}, {self.runs / 'report.md'}, its figures (PNG) and W&B offline runs in {self.runs}")
        return report

    def pack(self) -> None:
        c = self.cfg
        if (Path(c.shards) / "index.json").is_file():
            self.say(f"shards: {c.shards} (packed)")
            return
        if not c.raw:
            raise ConfigError(f"{c.shards} holds no index.json and `raw` is not set: nothing to pack")

        self.say(f"packing {c.raw} → {c.shards}")
        self.remade.add(str(c.shards))
        pack(c.dataset, Path(c.raw), Path(c.shards), workers=c.pack_workers,
             options=PackOptions(max_side=c.max_side, modalities=c.modalities))

    def train(self, stage: str, config: str, overrides: list[str], out: Path | None = None) -> None:
        """Train one stage into ``out``, unless it finished earlier on the same data (:meth:`current`)."""
        out = out or self.runs / stage
        extra = self.cfg.overrides.get(stage, [])
        data = next((o.split("=", 1)[1] for o in reversed([*overrides, *extra]) if o.startswith("data.shards=")), "")
        inputs = {"data.shards": shards_id(data)} if data else {}
        if (out / "final.json").is_file() or (out / "checkpoints").is_dir():
            if self.current(out, inputs, data) and (out / "final.json").is_file():
                self.say(f"{out.name}: finished earlier, skipped")
                return
        if is_export(out / "export"):  # an export of an earlier checkpoint than the one this launch will end at
            shutil.rmtree(out / "export")
        write_record(out, inputs)
        self.remade.add(out.name)
        resuming = (out / "checkpoints" / "latest").is_file()
        self.say(f"{out.name}: training ({'resuming' if resuming else 'from scratch'}) on {self.cfg.num_gpus} "
                 f"processes; log {out}.log")
        start = time.time()
        self.launch("launch/train.py", config, [*overrides, f"output_dir={out}", "resume=auto", *extra],
                    out.with_suffix(".log"))
        final = json.loads((out / "final.json").read_text())
        scores = ", ".join(f"{split} accuracy {m['accuracy']:.3f}, weighted F1 {m['weighted_f1']:.3f}"
                           for split, m in final["metrics"].items())
        self.say(f"{out.name}: {scores} at {final.get('scored_tag')}, {final.get('scored', 'best on dev')} "
                 f"({time.time() - start:.0f} s)")

    def current(self, out: Path, inputs: dict[str, Any], data: str) -> bool:
        """Whether the run in ``out`` was made from ``inputs`` (what its made_from.json records); if not, it is
        set aside under ``RUNS/stale/`` and the console says why. A run that records nothing (trained by hand, or
        by an m2fdist before runs recorded their inputs) is current unless this pipeline rewrote its data now."""
        recorded = read_record(out)
        if recorded is None:
            if data not in self.remade:
                return True
            why = f"its data {data} was rewritten in this run, and it records no inputs"
        elif recorded == inputs:
            return True
        else:
            why = "what it was trained on changed (" + "; ".join(changes(recorded, inputs)) + ")"
        stale = self.runs / "stale" / out.name
        shutil.rmtree(stale, ignore_errors=True)
        stale.parent.mkdir(parents=True, exist_ok=True)
        out.rename(stale)
        self.say(f"{out.name}: training again: {why}; the earlier run is now {stale} (delete it to free the space)")
        return False

    def export(self, stage: str) -> None:
        out = self.runs / stage
        if is_export(out / "export"):
            return
        export(out, "best")

    def bundle(self) -> None:
        """RUNS/model: the exports together with a model card, what `m2fdist predict --model` and
        `M2FNet.from_pretrained` load."""
        write_bundle(self.runs)
        self.say(f"model: {self.runs / 'model'} (m2fdist predict --model {self.runs / 'model'} --manifest FILE)")

    def extract(self) -> None:
        """Dialog features from the stage exports, unless they were extracted by these same exports: the index
        records the exports' identities (``made_from``), and features made by others are extracted again."""
        c = self.cfg
        index = Path(c.features) / "index.json"
        now = {s: export_id(self.runs / s / "export") for s in self.extractors}
        if index.is_file():
            recorded = json.loads(index.read_text()).get(MADE_FROM)
            if recorded == now or (recorded is None and not {s for s in self.extractors if s in self.remade}):
                self.say(f"features: {c.features} (extracted)")
                return
            why = ("; ".join(changes(recorded, now)) if recorded is not None else
                   "stages were retrained in this run, and the features record no exports")
            self.say(f"features: extracting again: the exports they were made from changed ({why})")
        self.remade.add(str(c.features))
        self.say(f"extracting dialog features → {c.features}; log {self.runs / 'extract.log'}")
        overrides = [f"data.shards={c.shards}", f"dataset={c.dataset}", f"extract.out={c.features}",
                     *(f"extract.{s}={self.runs / s / 'export'}" if s in self.extractors
                       else f"extract.{s}=''" for s in NAMES),  # '': that modality is left out
                     *self.cfg.overrides.get("extract", [])]
        self.launch("launch/extract.py", c.extract, overrides, self.runs / "extract.log")
