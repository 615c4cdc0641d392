"""``m2fdist predict --model MODEL (--manifest FILE | --root DIR)``: each utterance's emotion and probabilities.

MODEL is an exported M2FNet bundle (the pipeline writes it as ``RUNS/model``; ``M2FNet.save_pretrained``
writes the same): ``text/``, ``audio/``, ``visual/``, ``fusion/`` stage exports, or ``text/`` alone for a
text-only model. Its labels are the ones it was trained with (MELD's seven, IEMOCAP's six, a manifest
corpus's own).

Input is a CSV or JSONL manifest (columns dialog, utt, speaker, text, video, audio, start, end; any folder
layout, paths relative to the manifest) or a raw tree in MELD's or IEMOCAP's layout (the Emotion column may be
missing or empty). A text-only model needs no media. Output is JSON (default) or CSV, one row per utterance;
an utterance that cannot be read or decoded is a row with ``skipped`` and the reason.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from m2fdist.api import M2FNet
from m2fdist.cli.args import positive
from m2fdist.raw import READERS, read_corpus
from m2fdist.raw.base import Corpus
from m2fdist.raw.manifest import read_manifest


def read_input(model: M2FNet, manifest: Path | None, root: Path | None, layout: str | None) -> Corpus:
    """The corpus to predict on: a manifest, or a raw tree in ``layout`` (default: the model's dataset's)."""
    if manifest is not None:
        return read_manifest(manifest, needs=model.needs)
    layout = layout or model.dataset
    if layout not in ("meld", "iemocap"):  # a manifest-trained model, or --layout manifest: no tree to read
        raise ValueError("--root reads a tree in MELD's or IEMOCAP's layout (--layout meld|iemocap); dialogs in "
                         "any other layout are given as --manifest FILE")
    unlabelled = {"require_labels": False} if layout == "meld" else {}  # MELD's Emotion column may be empty
    return read_corpus(layout, root, media=bool(model.needs), **unlabelled)


def predict_rows(model: M2FNet, corpus: Corpus, batch_size: int = 16, faces: Path | None = None,
                 progress: bool = False) -> Iterator[dict[str, Any]]:
    """One row per utterance of the corpus (and per skipped source row), a dialog's rows as soon as it is
    predicted: emotion and probabilities, or why not."""
    split_of = {u.key: split for split, dialogs in corpus.splits.items() for d in dialogs for u in d}
    for dialog in model.iter_dialogs(corpus, batch_size=batch_size, faces=faces, progress=progress):
        for u, result in dialog:
            split = split_of[u.key]
            row = {"split": split, "dialog": u.dialog, "utt": u.utt, "speaker": u.speaker, "text": u.text, **result}
            if row["emotion"] is None:
                print(f"skipped {split} {u.dialog} {u.utt}: {row['skipped']}".replace("  ", " "), file=sys.stderr)
            yield row
    for s in corpus.skipped:
        print(f"skipped {s.source or ''} {s.split or ''} {s.dialog or ''} {s.utt or ''}: {s.reason}", file=sys.stderr)
        if corpus.dataset == "manifest":  # a manifest's bad rows are rows of the output too
            yield {"split": "", "dialog": s.dialog, "utt": s.utt, "speaker": None, "text": None,
                   "emotion": None, "probs": None, "skipped": f"{s.source}: {s.reason}"}


def write_rows(rows: Iterable[dict[str, Any]], labels: list[str], fmt: str, out: Any) -> None:
    """Each row as it comes, flushed: what was predicted before a failure or a stop is on disk."""
    if fmt == "json":  # one JSON array, written element by element
        out.write("[")
        for i, r in enumerate(rows):
            out.write(("," if i else "") + "\n" + json.dumps(r, indent=1, ensure_ascii=False))
            out.flush()
        out.write("\n]\n")
        return
    writer = csv.writer(out)
    writer.writerow(["split", "dialog", "utt", "speaker", "text", "emotion", *labels, "skipped", "note"])
    for r in rows:
        probs = [r["probs"][n] for n in labels] if r["probs"] else [""] * len(labels)
        writer.writerow([r["split"], r["dialog"], r["utt"], r["speaker"], r["text"], r["emotion"] or "", *probs,
                         r.get("skipped", ""), r.get("note", "")])
        out.flush()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "Each utterance's emotion and class probabilities, from an exported M2FNet."
    p.epilog = "\n\n".join(__doc__.split("\n\n")[1:]).replace("``", "")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--model", type=Path, required=True, help="exported M2FNet bundle (RUNS/model, or a folder "
                   "written by M2FNet.save_pretrained)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", type=Path, help="CSV or JSONL: dialog, utt, speaker, text, video, audio, start, "
                     "end (paths relative to the manifest's folder)")
    src.add_argument("--root", type=Path, help="a raw tree in MELD's or IEMOCAP's layout")
    p.add_argument("--layout", choices=sorted(set(READERS) - {"manifest"}), default=None,
                   help="--root's layout (default: that of the dataset the model was trained on)")
    p.add_argument("--format", choices=["json", "csv"], default="json")
    p.add_argument("--out", type=Path, default=None, help="default: standard output")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when available)")
    p.add_argument("--batch-size", "--chunk", dest="batch_size", type=positive(int), default=16,
                   help="utterances decoded and run through the extractors at once (memory does not grow with a "
                        "dialog's length)")
    p.add_argument("--faces", type=Path, default=None, help="face set (m2fdist faces) of shards packed from "
                   "these clips: its boxes, joined by key, replace MTCNN (MELD / IEMOCAP layouts)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on standard error")


def run(args: argparse.Namespace) -> int:
    model = M2FNet.from_pretrained(args.model, device=args.device)
    corpus = read_input(model, args.manifest, args.root, args.layout)
    rows = predict_rows(model, corpus, args.batch_size, args.faces, progress=not args.no_progress)
    out = args.out.open("w", newline="") if args.out else sys.stdout
    try:
        write_rows(rows, model.labels, args.format, out)
    finally:
        if args.out:
            out.close()
    return 0
