"""Training manifests in a layout and a label set no code here knows, made from the synthetic trees' real clips.

The labels are calm / tense / joyful, mapped from the synthetic emotions (whose cues the clips and sentences carry,
so a model can learn them); labels with no mapping (IEMOCAP's xxx, MELD's planted "contempt") become rows without a
label, which the reader must skip.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from m2fdist.synth.meld import FOLDERS

LABELS = ("calm", "joyful", "tense")  # sorted: the set a manifest's rows give when no --labels is named
MOODS = {"neutral": "calm", "sadness": "calm", "joy": "joyful", "surprise": "joyful", "anger": "tense",
         "disgust": "tense", "fear": "tense", "neu": "calm", "sad": "calm", "hap": "joyful", "exc": "joyful",
         "ang": "tense", "fru": "tense"}


def synth_rows(root: Path) -> list[dict[str, Any]]:
    """The utterances a synthetic tree's ``synth_manifest.json`` records (its ground truth)."""
    return json.loads((Path(root) / "synth_manifest.json").read_text())["utterances"]


def text_jsonl(meld_root: Path, path: Path) -> Path:
    """All of the MELD tree's rows as a JSONL of 'episodes' (string dialog ids, utterance positions 5, 15, 25, ...,
    keys in another case), no media."""
    rows = [{"Dialog": f"episode-{r['split']}-{r['dialog']}", "Utt": 10 * r["utt"] + 5, "Speaker": r["speaker"],
             "Text": r["text"], "Label": MOODS.get(r["label"]), "Split": r["split"]} for r in synth_rows(meld_root)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def clips_csv(meld_root: Path, iemocap_root: Path, path: Path) -> tuple[Path, dict[str, Any]]:
    """A CSV of clips: some MELD dialogs' mp4s (absolute paths; the planted missing and corrupt clips kept, the
    100 s ones left out) and IEMOCAP sessions 1 and 5, each turn a span of its dialog's avi with its own wav
    (paths relative to the CSV). Session 1's rows name no split (``--dev-fraction`` makes them train or dev).

    Returns the CSV and what it planted: the lines of the missing clip and of the rows without a label.
    """
    meld = json.loads((Path(meld_root) / "synth_manifest.json").read_text())
    long = {p["path"] for p in meld["planted"] if p["kind"] == "long"}
    missing = {(p["split"], p["dialog"], p["utt"]) for p in meld["planted"] if p["kind"] == "missing"}
    # synth_meld's dialogs with 4 train dialogs: train 125 holds the corrupt clip, dev 110 the missing one
    keep = {"train": {0, 125}, "dev": {0, 110}, "test": {38}}
    rows: list[dict[str, Any]] = []
    for r in meld["utterances"]:
        if r["dialog"] not in keep[r["split"]] or r["clip"] in long:
            continue
        clip = r["clip"] or f"{FOLDERS[r['split']]}/dia{r['dialog']}_utt{r['utt']}.mp4"
        rows.append({"dialog": f"tv{r['dialog']}", "utt": r["utt"], "speaker": r["speaker"], "text": r["text"],
                     "label": MOODS.get(r["label"], ""), "split": r["split"], "video": str(Path(meld_root) / clip),
                     "audio": "", "start": "", "end": "", "_missing": (r["split"], r["dialog"], r["utt"]) in missing})
    turns = sorted((r for r in synth_rows(iemocap_root) if r["split"] in ("Session1", "Session5")),
                   key=lambda r: (r["dialog"], r["start"]))
    position: dict[str, int] = {}
    for r in turns:
        position[r["dialog"]] = utt = position.get(r["dialog"], -1) + 1
        rel = {k: os.path.relpath(Path(iemocap_root) / r[c], path.parent) for k, c in (("video", "video"),
                                                                                        ("audio", "clip"))}
        rows.append({"dialog": r["dialog"], "utt": utt, "speaker": r["speaker"], "text": r["text"],
                     "label": MOODS.get(r["label"], ""), "split": "test" if r["split"] == "Session5" else "",
                     **rel, "start": r["start"], "end": r["end"], "_missing": False})
    columns = ["dialog", "utt", "speaker", "text", "label", "split", "video", "audio", "start", "end"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows([r[c] for c in columns] for r in rows)
    planted = {"missing": [n for n, r in enumerate(rows, 2) if r["_missing"]],
               "unlabelled": [n for n, r in enumerate(rows, 2) if not r["label"]], "rows": len(rows)}
    return path, planted
