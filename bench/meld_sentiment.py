"""MELD's Sentiment column as a second real task, through the manifest path (``m2fdist pack manifest``).

    .venv/bin/python bench/meld_sentiment.py                              # baselines + the text stage (MiniLM)
    .venv/bin/python bench/meld_sentiment.py --baselines-only             # majority and TF-IDF only
    .venv/bin/python bench/meld_sentiment.py --train-utterances 200 --dev-utterances 100 train.epochs=1  # smoke

Reads MELD's train and dev CSVs (default ``../shared/data/meld-text`` beside the repository; ``--data`` names
another folder with ``train_sent_emo.csv`` and ``dev_sent_emo.csv``) with MELD's own reader, writes them as a
JSONL manifest whose ``label`` is the Sentiment column (negative / neutral / positive) and whose dialogs are named
by split (MELD numbers each split's dialogs from 0), packs it text-only with ``m2fdist pack manifest``, and prints
one table of dev weighted F1, accuracy, macro F1 and per-class F1:
- the majority class; TF-IDF unigrams + bigrams with logistic regression (C chosen on dev);
- the text stage (``configs/meld/text_small.yaml`` with ``dataset=manifest``: its three labels come from the
  shards' index.json) fine-tuned by a deepspeed launch, scored at its best-dev evaluation, with its wall time.
``--json FILE`` writes the rows. MELD's test split is never read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from meld_text import CSVS, DATA, ROOT, cpu_name, default_model, run_stage, table

SPLITS = ("train", "dev")


def write_manifest(data: Path, out: Path, limits: dict[str, int]) -> tuple[Path, int]:
    """MELD's train and dev rows as a manifest labelled by Sentiment; a split with a limit keeps its first whole
    dialogs holding at least that many utterances. Returns the file and the rows MELD's reader left out."""
    from m2fdist.raw.meld import read_meld

    corpus = read_meld(data, splits=SPLITS, require_labels=False, media=False)
    rows = []
    for split in SPLITS:
        kept = 0
        for dialog in corpus.splits.get(split, []):
            if limits.get(split) and kept >= limits[split]:
                break
            kept += len(dialog)
            rows += [{"dialog": f"{split}-{u.dialog}", "utt": int(u.utt), "speaker": u.speaker, "text": u.text,
                      "label": (u.extra.get("sentiment") or "").strip().lower(), "split": split} for u in dialog]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return out, len(corpus.skipped)


def pack_manifest(manifest: Path, shards: Path) -> dict:
    """Text-only shards of the manifest (the label set is the rows' own, sorted); the index."""
    from m2fdist.format.index import load_index
    from m2fdist.pack import PackOptions, pack

    if not (shards / "index.json").is_file():
        pack("manifest", manifest, shards, options=PackOptions(modalities="text"), progress=False, overwrite=True)
    return load_index(shards)


def read_split(shards: Path, index: dict, split: str) -> list[dict]:
    from m2fdist.data.stream import read_samples

    urls = [str(shards / s["url"]) for s in index["splits"][split]["shards"]]
    return [json.loads(s["json"]) for s in read_samples(urls)]


def baselines(train: list[dict], dev: list[dict], names: list[str]) -> list[tuple[str, dict, str]]:
    """Majority class, and TF-IDF 1-2 grams with a logistic regression whose C is chosen on dev."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from m2fdist.evaluation.metrics import classification_metrics

    y_train, y_dev = (np.array([s["label_id"] for s in x]) for x in (train, dev))
    rows = [("majority class", classification_metrics(y_dev, np.full(len(dev), np.bincount(y_train).argmax()),
                                                      names), "—")]
    t = time.time()
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x_train, x_dev = vec.fit_transform([s["text"] for s in train]), vec.transform([s["text"] for s in dev])
    best = None
    for c in (0.1, 0.3, 1.0, 3.0, 10.0):
        m = classification_metrics(y_dev, LogisticRegression(C=c, max_iter=3000).fit(x_train, y_train).predict(x_dev),
                                   names)
        if best is None or m["weighted_f1"] > best[0]["weighted_f1"]:
            best = (m, c)
    rows.append((f"TF-IDF 1-2 grams + logistic regression (C={best[1]:g})", best[0], f"{time.time() - t:.0f} s"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA, help="folder with MELD's train and dev CSVs")
    p.add_argument("--model", default=None, help="text model folder or hub name (default: all-MiniLM-L6-v2)")
    p.add_argument("--config", default="configs/meld/text_small.yaml")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_meld_sentiment")
    p.add_argument("--train-utterances", type=int, default=0, help="first whole train dialogs holding at least "
                   "this many utterances (0: all of train)")
    p.add_argument("--dev-utterances", type=int, default=0, help="likewise for dev (0: all of dev; a slice "
                   "is for smoke tests only: choose on the whole dev split)")
    p.add_argument("--num-gpus", type=int, default=2, help="processes of the stage's deepspeed launch")
    p.add_argument("--baselines-only", action="store_true")
    p.add_argument("--name", default="stage", help="name of the stage run (its folder under --work)")
    p.add_argument("--json", type=Path, default=None, help="write the table's rows (metrics per run) here")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the text stage's config")
    args = p.parse_args(argv)
    if not all((args.data / f).is_file() for f in CSVS.values()):
        p.error(f"{args.data} lacks {' or '.join(CSVS.values())}")
    tag = f"train{args.train_utterances}_dev{args.dev_utterances}"
    manifest, meld_skips = write_manifest(args.data, args.work / tag / "sentiment.jsonl",
                                          {"train": args.train_utterances, "dev": args.dev_utterances})
    shards = args.work / tag / "shards"
    index = pack_manifest(manifest, shards)
    names = index["label_names"]
    train, dev = read_split(shards, index, "train"), read_split(shards, index, "dev")
    print(f"MELD sentiment: {len(train)} train, {len(dev)} dev utterances, labels {', '.join(names)}; "
          f"{meld_skips} CSV rows left out by MELD's reader, {len(index['skipped'])} manifest rows skipped; "
          f"{cpu_name()}", file=sys.stderr)
    rows = baselines(train, dev, names)
    print(table(rows, names), flush=True)
    if not args.baselines_only:
        m, seconds, cmd = run_stage(shards, args.work / tag / args.name, args.config, args.model or default_model(),
                                    args.num_gpus, ["dataset=manifest", *args.overrides])
        rows.append((f"text stage, best dev (step {m['step']}): `{cmd}`", m, f"{seconds / 60:.1f} min"))
        print(table(rows, names))
    if args.json:
        args.json.write_text(json.dumps({"labels": names, "train": len(train), "dev": len(dev), "cpu": cpu_name(),
                                         "rows": [{"run": n, "metrics": m, "time": c} for n, m, c in rows]},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
