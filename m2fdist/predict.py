"""``m2fdist predict --model MODEL --root DIR``: each utterance's emotion and class probabilities.

MODEL is an exported M2FNet: a folder with the four stage exports ``text/``, ``audio/``, ``visual/``,
``fusion/`` (the pipeline writes it as ``RUNS/model``). DIR holds clips and a CSV in MELD's layout; the
Emotion column may be missing or empty. Output is JSON (default) or CSV.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m2fdist.data.decode import sample_frames
from m2fdist.export import load_exported
from m2fdist.labels import LABELS
from m2fdist.media import audio_from_video
from m2fdist.raw.meld import read_meld

PARTS = ("text", "audio", "visual", "fusion")


def load_model(path: Path) -> dict[str, Any]:
    missing = [p for p in PARTS if not (Path(path) / p / "model.safetensors").is_file()]
    if missing:
        raise FileNotFoundError(f"{path} lacks the exports {missing}: expected {', '.join(PARTS)} sub-folders "
                                "(the pipeline writes them to RUNS/model)")
    return {p: load_exported(Path(path) / p) for p in PARTS}


@torch.no_grad()
def predict_dialog(model: dict[str, Any], utterances: list) -> np.ndarray:
    """Class probabilities [k, C] for one dialog's utterances, through the same path as training."""
    text_cfg, text = model["text"]
    vis_cfg, visual = model["visual"]
    aud_cfg, audio = model["audio"]
    fus_cfg, fusion = model["fusion"]
    metas = [{**u.extra, "text": u.text, "speaker": u.speaker} for u in utterances]  # as packed into the json
    feats = {"text": text.sentence_vector(**text.tokenize_metas(metas))}
    waves = [torch.from_numpy(audio_from_video(Path(u.video))) for u in utterances]
    lengths = torch.tensor([len(w) for w in waves])
    padded = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        padded[i, : len(w)] = w
    feats["audio"] = audio(padded, lengths)
    vis = []
    for u in utterances:
        frames = torch.from_numpy(sample_frames(u.video, vis_cfg.data.num_frames))
        vis.append(visual(frames[None], torch.tensor([[frames.shape[1], frames.shape[2]]])))
    feats["visual"] = torch.cat(vis)
    mods = {"T": "text", "A": "audio", "V": "visual"}
    inputs = {mods[m]: feats[mods[m]][None].float() for m in fus_cfg.fusion.modalities}
    logits = fusion(torch.ones(1, len(utterances), dtype=torch.bool), **inputs)[0]
    return logits.softmax(-1).numpy()


def readable(u) -> str | None:
    """Why an utterance's clip cannot be used, or None: such utterances get a row saying so, not a guess."""
    from m2fdist.media import MediaError, probe

    try:
        _, has_video, has_audio = probe(u.video)
    except MediaError as e:
        return e.reason
    return None if has_video and has_audio else "clip lacks a video or audio stream"


def predict(model_dir: Path, root: Path) -> list[dict[str, Any]]:
    model = load_model(model_dir)
    names = list(LABELS["meld"])
    corpus = read_meld(root, require_labels=False)
    rows = []
    for split, dialogs in corpus.splits.items():
        for dialog in dialogs:
            reasons = {u.key: readable(u) for u in dialog}
            good = [u for u in dialog if reasons[u.key] is None]
            probs = dict(zip([u.key for u in good], predict_dialog(model, good), strict=True)) if good else {}
            for u in dialog:
                row = {"split": split, "dialog": u.dialog, "utt": u.utt, "speaker": u.speaker, "text": u.text}
                if u.key in probs:
                    p = probs[u.key]
                    row.update(emotion=names[int(p.argmax())],
                               probs={n: round(float(x), 6) for n, x in zip(names, p, strict=True)})
                else:
                    row.update(emotion=None, probs=None, skipped=reasons[u.key])
                    print(f"skipped {split} dia{u.dialog}_utt{u.utt}: {reasons[u.key]}", file=sys.stderr)
                rows.append(row)
    for s in corpus.skipped:
        print(f"skipped {s.split} dia{s.dialog}_utt{s.utt}: {s.reason}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="m2fdist predict", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="exported M2FNet folder (RUNS/model)")
    p.add_argument("--root", type=Path, required=True, help="clips + CSV in MELD's layout")
    p.add_argument("--format", choices=["json", "csv"], default="json")
    p.add_argument("--out", type=Path, default=None, help="default: standard output")
    args = p.parse_args(argv)
    rows = predict(args.model, args.root)
    out = args.out.open("w", newline="") if args.out else sys.stdout
    if args.format == "json":
        json.dump(rows, out, indent=1, ensure_ascii=False)
        out.write("\n")
    else:
        names = list(LABELS["meld"])
        writer = csv.writer(out)
        writer.writerow(["split", "dialog", "utt", "speaker", "text", "emotion", *names, "skipped"])
        for r in rows:
            probs = [r["probs"][n] for n in names] if r["probs"] else [""] * len(names)
            writer.writerow([r["split"], r["dialog"], r["utt"], r["speaker"], r["text"], r["emotion"] or "", *probs,
                             r.get("skipped", "")])
    if args.out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
