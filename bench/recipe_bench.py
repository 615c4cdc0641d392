"""Loss-recipe benchmark: does an extractor's embedding separate emotions under ``triplet.recipe=paper``
(20·L_AMT + 5·L_Cov + 1·L_Var, as printed) and ``triplet.recipe=vicreg_ce`` (VICReg's terms plus a
cross-entropy head, the MELD / IEMOCAP configs' recipe)?

Each stage trains in one process (its own loss and loader; Adam, fp32, no DeepSpeed) from the same seed
under each recipe, then a logistic-regression probe fitted on the train split's embeddings is scored on
the test split (accuracy and weighted F1), next to the majority class's accuracy. Prints a table.

    .venv/bin/python bench/recipe_bench.py --shards demo/shards/meld [--stages audio,visual] [--epochs 3]

The visual stage takes face boxes from SHARDS/faces when a face set is there (``m2fdist faces``).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

from m2fdist.config.load import load_config
from m2fdist.training.stages import STAGE_TYPES

STAGE_ARGS = {"audio": ["audio.seconds=2.0"], "visual": ["data.num_frames=2"]}


@torch.no_grad()
def embed(stage, model, split: str) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    xs, ys = [], []
    for batch in stage.loader(split, False, 0, 1):
        y, x, _ = stage.evaluate(model, batch)
        xs.append(x)
        ys.append(y)
    model.train()
    return np.concatenate(xs), np.concatenate(ys)


def run(stage_name: str, shards: Path, recipe: str, epochs: int, lr: float, batch: int) -> dict[str, float]:
    cfg = load_config(f"configs/tiny/{stage_name}.yaml", [
        f"data.shards={shards}", f"triplet.recipe={recipe}", f"data.batch_size={batch}", "data.num_workers=1",
        *STAGE_ARGS[stage_name]])
    stage = STAGE_TYPES[stage_name](cfg)
    torch.manual_seed(0)
    model = stage.build_model().train()
    stage.prepare(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loader = stage.loader("train", True, 0, 1)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        loader.dataset.set_epoch(epoch)
        for b in loader:
            loss = stage.loss(model, b)
            opt.zero_grad()
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - t0
    x_tr, y_tr = embed(stage, model, "train")
    x_te, y_te = embed(stage, model, "test")
    probe = LogisticRegression(max_iter=2000).fit(x_tr, y_tr)
    pred = probe.predict(x_te)
    majority = np.bincount(y_tr).argmax()
    return {"acc": 100 * accuracy_score(y_te, pred), "wf1": 100 * f1_score(y_te, pred, average="weighted"),
            "majority": 100 * float(np.mean(y_te == majority)), "seconds": seconds, "n_test": len(y_te)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=Path, required=True)
    p.add_argument("--stages", default="audio,visual")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    rows = []
    for stage in args.stages.split(","):
        for recipe in ("paper", "vicreg_ce"):
            r = run(stage, args.shards, recipe, args.epochs, args.lr, args.batch)
            rows.append((stage, recipe, r))
            print(stage, recipe, r, flush=True)
    extra = "; ".join(f"{s}: {' '.join(a)}" for s, a in STAGE_ARGS.items())
    print(f"\n{args.epochs} epochs, batch {args.batch}, Adam lr {args.lr}, tiny configs ({extra}), "
          f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads\n")
    print("| stage | triplet.recipe | test accuracy (probe) | test weighted F1 (probe) | majority class | train time |")
    print("|---|---|---|---|---|---|")
    for stage, recipe, r in rows:
        print(f"| {stage} | {recipe} | {r['acc']:.1f} | {r['wf1']:.1f} | {r['majority']:.1f} | {r['seconds']:.0f} s |")


if __name__ == "__main__":
    main()
