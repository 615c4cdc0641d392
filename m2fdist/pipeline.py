"""``m2fdist pipeline``: pack → text → audio → visual → extract → fusion (+ ablations) → report.

With ``modalities: text`` it packs the annotations alone and runs text → report.

Each stage is one deepspeed launch with the configured number of processes. A stage whose output is
complete (its ``final.json``, an export, a features index) is skipped; an interrupted stage is launched
again with ``resume=auto`` and continues from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from m2fdist.config import ConfigError
from m2fdist.runtime import free_port

BIN = Path(sys.executable).parent
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
    dataset: str = "meld"
    raw: str = ""  # raw tree, packed when the shards are missing
    shards: str = "shards/meld"
    features: str = "shards/meld_features"
    runs: str = "runs/meld"
    num_gpus: int = 1  # processes per stage launch (CPU processes with DS_ACCELERATOR=cpu)
    pack_workers: int = 4
    max_side: int = 320
    tiny_text: bool = False  # build a tiny local RoBERTa into runs/roberta (no hub access needed)
    text: str = "configs/meld/text.yaml"
    audio: str = "configs/meld/audio.yaml"
    visual: str = "configs/meld/visual.yaml"
    extract: str = "configs/meld/extract.yaml"
    fusion: str = "configs/meld/fusion.yaml"
    overrides: dict[str, list[str]] = field(default_factory=dict)  # per stage: extra key=value
    ablations: bool = True
    modalities: str = "text,audio,visual"  # or "text": text-only packing, text stage → report


def load(path: Path, overrides: list[str]) -> PipelineConfig:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(PipelineConfig), OmegaConf.load(path),
                                 OmegaConf.from_dotlist(overrides))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {str(e).splitlines()[0]}") from None


class Pipeline:
    def __init__(self, cfg: PipelineConfig):
        from m2fdist.pack.writer import MODALITIES

        if cfg.modalities not in MODALITIES:
            raise ConfigError(f"modalities must be one of {', '.join(MODALITIES)}, not {cfg.modalities!r}")
        self.cfg = cfg
        self.media = cfg.modalities != "text"  # False: text stage → report
        self.runs = Path(cfg.runs)
        self.env = dict(os.environ)
        import torch

        if not torch.cuda.is_available():
            self.env.setdefault("DS_ACCELERATOR", "cpu")

    def say(self, message: str) -> None:
        print(f"[pipeline] {message}", file=sys.stderr, flush=True)

    def launch(self, script: str, config: str, overrides: list[str], log: Path) -> None:
        cmd = [str(BIN / "deepspeed"), "--num_gpus", str(self.cfg.num_gpus), "--master_port", str(free_port()), script,
               "--config", config, *overrides]
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as f:
            rc = subprocess.run(cmd, cwd=ROOT, env=self.env, stdout=f, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
            raise RuntimeError(f"{' '.join(cmd)} failed ({rc}); log: {log}\n{tail}")

    def run(self) -> Path:
        c = self.cfg
        self.pack()
        common = [f"data.shards={c.shards}", f"dataset={c.dataset}"]
        text_model = [f"text.model={self.runs / 'roberta'}"] if c.tiny_text else []
        if c.tiny_text and not (self.runs / "roberta" / "config.json").is_file():
            self.say(f"building a tiny RoBERTa from the shards' text → {self.runs / 'roberta'}")
            from m2fdist.cli import main as cli

            cli(["tiny-text", "--shards", c.shards, "--out", str(self.runs / "roberta")])
        for stage in ("text", "audio", "visual") if self.media else ("text",):
            self.train(stage, getattr(c, stage), [*common, *(text_model if stage == "text" else [])])
            self.export(stage)
        if not self.media:
            return self.report()
        self.extract()
        self.train("fusion", c.fusion, [f"data.shards={c.features}", f"dataset={c.dataset}"])
        self.export("fusion")
        self.bundle()
        if c.ablations:
            for name, extra in ABLATIONS.items():
                self.train("fusion", c.fusion, [f"data.shards={c.features}", f"dataset={c.dataset}", *extra],
                           out=self.runs / f"fusion_{name}")
        return self.report()

    def report(self) -> Path:
        from m2fdist.report import write_report

        report = write_report(self.runs)
        self.bundle()  # again: the model card now carries the report's scores (text only: the first bundle)
        print((self.runs / "report.md").read_text(), flush=True)
        self.say(f"done: {report}, {self.runs / 'report.md'}, confusion PNGs and W&B offline runs in {self.runs}")
        return report

    def pack(self) -> None:
        c = self.cfg
        if (Path(c.shards) / "index.json").is_file():
            self.say(f"shards: {c.shards} (packed)")
            return
        if not c.raw:
            raise ConfigError(f"{c.shards} holds no index.json and `raw` is not set: nothing to pack")
        from m2fdist.pack import PackOptions, pack

        self.say(f"packing {c.raw} → {c.shards}")
        pack(c.dataset, Path(c.raw), Path(c.shards), workers=c.pack_workers,
             options=PackOptions(max_side=c.max_side, modalities=c.modalities))

    def train(self, stage: str, config: str, overrides: list[str], out: Path | None = None) -> None:
        out = out or self.runs / stage
        if (out / "final.json").is_file():
            self.say(f"{out.name}: finished earlier, skipped")
            return
        resuming = (out / "checkpoints" / "latest").is_file()
        self.say(f"{out.name}: training ({'resuming' if resuming else 'from scratch'}) on {self.cfg.num_gpus} "
                 f"processes; log {out}.log")
        extra = self.cfg.overrides.get(stage, [])
        start = time.time()
        self.launch("launch/train.py", config, [*overrides, f"output_dir={out}", "resume=auto", *extra],
                    out.with_suffix(".log"))
        final = json.loads((out / "final.json").read_text())
        scores = ", ".join(f"{split} accuracy {m['accuracy']:.3f}, weighted F1 {m['weighted_f1']:.3f}"
                           for split, m in final["metrics"].items())
        self.say(f"{out.name}: {scores} at {final.get('scored_tag')}, {final.get('scored', 'best on dev')} "
                 f"({time.time() - start:.0f} s)")

    def export(self, stage: str) -> None:
        out = self.runs / stage
        if (out / "export" / "model.safetensors").is_file():
            return
        from m2fdist.export import export

        export(out, "best")

    def bundle(self) -> None:
        """RUNS/model: the exports together with a model card, what `m2fdist predict --model` and
        `M2FNet.from_pretrained` load."""
        from m2fdist.export import write_bundle

        write_bundle(self.runs)
        self.say(f"model: {self.runs / 'model'} (m2fdist predict --model {self.runs / 'model'} --manifest FILE)")

    def extract(self) -> None:
        c = self.cfg
        if (Path(c.features) / "index.json").is_file():
            self.say(f"features: {c.features} (extracted)")
            return
        self.say(f"extracting dialog features → {c.features}; log {self.runs / 'extract.log'}")
        overrides = [f"data.shards={c.shards}", f"dataset={c.dataset}", f"extract.out={c.features}",
                     *(f"extract.{s}={self.runs / s / 'export'}" for s in ("text", "audio", "visual")),
                     *self.cfg.overrides.get("extract", [])]
        self.launch("launch/extract.py", c.extract, overrides, self.runs / "extract.log")


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="m2fdist pipeline", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True, help="configs/<dataset>/pipeline.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the pipeline config")
    args = p.parse_args(argv)
    try:
        Pipeline(load(args.config, args.overrides)).run()
    except (ConfigError, RuntimeError) as e:
        print(f"m2fdist pipeline: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
