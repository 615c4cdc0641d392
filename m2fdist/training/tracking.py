"""Run logging on rank 0: ``output_dir/metrics.jsonl`` always, Weights & Biases when enabled.

Only rank 0 constructs a :class:`Tracker` that writes; other ranks get one that does nothing, so the
training loop never branches on the rank to log. The W&B run id is stored in checkpoints, so a resumed
run continues the same W&B run. A resumed run replays the steps after its checkpoint; records that
``metrics.jsonl`` already holds (same kind, step and split) are not written or sent again, so the file and
the W&B run hold each step once. Nothing here reads or writes an API key.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from m2fdist.common import atomic


class Tracker:
    def __init__(self, output_dir: Path, config: dict[str, Any], active: bool, wandb_cfg: Any,
                 run_id: str | None = None):
        self.active = active
        self.run = None
        self.run_id = run_id
        self.path = Path(output_dir) / "metrics.jsonl"
        self.seen: set[tuple[str, int, str | None]] = set()
        if not active:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            text = self.path.read_text()
            if text and not text.endswith("\n"):  # the last record was torn by a kill: drop it
                text = text[: text.rfind("\n") + 1]
                atomic.write_text(self.path, text)
            for line in text.splitlines():
                try:
                    r = json.loads(line)
                    self.seen.add((r["kind"], int(r["step"]), r.get("split")))
                except (ValueError, KeyError, TypeError):  # a line torn by a kill: dropped
                    continue
        if wandb_cfg.mode != "disabled":
            # here, not at the top: wandb's import costs seconds; only rank 0 of a logged run pays it
            import wandb

            # a W&B sweep agent names the run in WANDB_RUN_ID; a resumed run brings its own id
            self.run_id = run_id or os.environ.get("WANDB_RUN_ID") or secrets.token_hex(4)
            self.run = wandb.init(
                project=wandb_cfg.project, entity=wandb_cfg.entity, name=wandb_cfg.name, group=wandb_cfg.group,
                tags=list(wandb_cfg.tags), id=self.run_id, resume="allow", mode=wandb_cfg.mode,
                dir=str(output_dir), config=config,
            )
            self.run.define_metric("train/step")
            self.run.define_metric("*", step_metric="train/step")

    def _first_time(self, kind: str, step: int, split: str | None) -> bool:
        if (kind, step, split) in self.seen:
            return False
        self.seen.add((kind, step, split))
        return True

    def log(self, step: int, values: dict[str, Any], kind: str = "train") -> None:
        if not self.active or not self._first_time(kind, step, values.get("split")):
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.run is not None:
            flat = {f"{kind}/{k}" if kind != "train" else f"train/{k}": v
                    for k, v in values.items() if isinstance(v, int | float)}
            self.run.log({**flat, "train/step": step})

    def log_eval(self, step: int, split: str, metrics: dict[str, Any], names: list[str],
                 labels: Any = None, preds: Any = None) -> None:
        if not self.active or (("eval", step, split) in self.seen):
            return
        self.log(step, {"split": split, **metrics}, kind="eval")
        if self.run is None:
            return
        # here, not at the top: wandb's import costs seconds; only rank 0 of a logged run pays it
        import wandb

        scalars = {f"{split}/{k}": metrics[k] for k in ("accuracy", "weighted_f1", "macro_f1")}
        scalars.update({f"{split}/f1_{n}": f for n, f in metrics["per_class_f1"].items()})
        table = wandb.Table(columns=["class", "f1", "support"],
                            data=[[n, metrics["per_class_f1"][n], metrics["support"][n]] for n in names])
        logged = {**scalars, f"{split}/per_class": table, "train/step": step}
        if labels is not None and len(labels):
            logged[f"{split}/confusion_matrix"] = wandb.plot.confusion_matrix(
                y_true=list(map(int, labels)), preds=list(map(int, preds)), class_names=names)
        self.run.log(logged)
        for k, v in scalars.items():
            self.run.summary[k] = v

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
