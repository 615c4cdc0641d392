"""``m2fdist report RUNS``: the evaluation report of a pipeline run.

Every score is that of the checkpoint chosen on dev, the one ``m2fdist export`` ships; the fused model's
are computed from its export, so ``m2fdist eval`` and ``m2fdist predict`` of that export agree with them.
The last step's scores are kept beside them, named as such.

Writes ``RUNS/report.json`` (accuracy, weighted and macro F1, per-class F1 for each split), a
confusion-matrix PNG per split, and the modality ablation table (T, A, V, T+A+V concatenated,
T+A+V fused) next to the paper's numbers, also as ``RUNS/report.md``. A text-only run (no fusion stage)
is reported from its text stage; the report names the modalities it covers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from m2fdist import atomic

# Test-set accuracy / weighted F1 published in the M2FNet paper.
PAPER = {
    "meld": {"T": (67.24, 66.23), "A": (49.04, 39.63), "V": (45.63, 32.44), "T+A+V fused": (67.85, 66.71)},
    "iemocap": {"T": (66.30, 66.20), "A": (26.56, 21.79), "V": (20.39, 13.10), "T+A+V fused": (69.69, 69.86)},
}
ROWS = [("T", "fusion_T"), ("A", "fusion_A"), ("V", "fusion_V"), ("T+A+V concatenated", "fusion_TAV_concat"),
        ("T+A+V fused", "fusion")]
TEXT_ONLY_ROWS = [("T", "text")]
from m2fdist.modalities import NAME_OF as MODALITY_NAMES  # noqa: E402


def covered(stage: str, cfg: dict[str, Any]) -> str:
    """The modalities the reported model sees, in words."""
    if stage == "text":
        return "text only (the text stage; no audio or visual)"
    mods = cfg["fusion"]["modalities"]
    how = "attention fusion" if cfg["fusion"].get("fusion") == "attention" else cfg["fusion"].get("fusion", "")
    return f"{', '.join(MODALITY_NAMES[m] for m in mods)} ({how})"


def confusion_png(matrix: list[list[int]], names: list[str], path: Path, title: str) -> None:
    """A labelled heat map drawn with Pillow (no plotting library needed)."""
    from PIL import Image, ImageDraw

    n, cell, left, top = len(names), 56, 90, 60
    img = Image.new("RGB", (left + n * cell + 20, top + n * cell + 40), "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 10), title, fill="black")
    draw.text((left, 30), "rows: true label, columns: predicted", fill="black")
    peak = max(1, max(max(row) for row in matrix))
    for i, row in enumerate(matrix):
        draw.text((5, top + i * cell + cell // 2 - 5), names[i][:11], fill="black")
        for j, v in enumerate(row):
            shade = int(255 - 200 * v / peak)
            x, y = left + j * cell, top + i * cell
            draw.rectangle([x, y, x + cell - 2, y + cell - 2], fill=(shade, shade, 255))
            draw.text((x + cell // 3, y + cell // 3), str(v), fill="black" if shade > 120 else "white")
    for j, name in enumerate(names):
        draw.text((left + j * cell + 2, top + n * cell + 5), name[:8], fill="black")
    img.save(path)


def _final(path: Path) -> dict[str, Any] | None:
    f = path / "final.json"
    return json.loads(f.read_text()) if f.is_file() else None


def _selection(final: dict[str, Any]) -> dict[str, Any]:
    """Which checkpoint a stage's scores describe, and the last step's scores beside them."""
    return {"tag": final.get("scored_tag", final.get("best_tag")), "step": final.get("best_step"),
            "chosen_by": final.get("scored", "best checkpoint on dev"),
            "best_dev_weighted_f1": final.get("best_dev_weighted_f1"),
            "last_step": final.get("last", {}).get("step", final.get("step")),
            "last_metrics": final.get("last", {}).get("metrics", {})}


def shipped_scores(runs: Path, stage: str, final: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The reported model's scores per split, computed from the export that ships (``RUNS/model`` or
    ``RUNS/STAGE/export``) on the shards it was trained on; the training run's own best-checkpoint scores when
    there is no export yet."""
    from m2fdist.evaluate import evaluate_export

    cfg = json.loads((runs / stage / "config.json").read_text())
    candidates = ([runs / "model" / "fusion"] if stage == "fusion" else []) + [runs / stage / "export"]
    for model in candidates:
        if (model / "model.safetensors").is_file():
            scores = {split: evaluate_export(model, Path(cfg["data"]["shards"]), split)[0]
                      for split in final["metrics"]}
            return scores, f"the exported model {model}"
    return final["metrics"], f"the {stage} run's best checkpoint (not exported yet)"


def write_report(runs: Path) -> Path:
    runs = Path(runs)
    stage = "fusion" if (runs / "fusion" / "final.json").is_file() else "text"
    main = _final(runs / stage)
    if main is None:
        raise FileNotFoundError(f"{runs / 'fusion' / 'final.json'} (or, text only, {runs / 'text' / 'final.json'}) "
                                "not found: run the pipeline first")
    cfg = json.loads((runs / stage / "config.json").read_text())
    modalities = covered(stage, cfg)
    dataset = cfg["dataset"]
    from m2fdist.labels import LABELS

    names = list(LABELS[dataset])
    scores, scored = shipped_scores(runs, stage, main)
    splits = {}
    for split, m in scores.items():
        splits[split] = {k: m[k] for k in ("accuracy", "weighted_f1", "macro_f1", "per_class_f1", "support", "count")}
        png = runs / f"confusion_{split}.png"
        confusion_png(m["confusion_matrix"], names, png, f"{dataset} {split}: {modalities}")
        splits[split]["confusion_png"] = str(png)
    split = "test" if "test" in scores else next(iter(scores))
    ablation = []
    for label, folder in ROWS if stage == "fusion" else TEXT_ONLY_ROWS:
        final = _final(runs / folder)
        if final is None or split not in final["metrics"]:
            continue
        m = scores[split] if folder == stage else final["metrics"][split]
        sel = _selection(final)
        last = sel["last_metrics"].get(split, {})
        paper = PAPER.get(dataset, {}).get(label)
        ablation.append({"modalities": label, "run": folder, "split": split, "accuracy": m["accuracy"],
                         "weighted_f1": m["weighted_f1"], "checkpoint": sel["tag"], "step": sel["step"],
                         "last_step": sel["last_step"], "last_accuracy": last.get("accuracy"),
                         "last_weighted_f1": last.get("weighted_f1"),
                         "paper_accuracy": paper[0] if paper else None,
                         "paper_weighted_f1": paper[1] if paper else None})
    report = {"dataset": dataset, "modalities": modalities, "scored": scored, "checkpoint": _selection(main),
              "splits": splits, "ablation": ablation,
              "stages": {s: (_final(runs / s) or {}).get("metrics", {}).get(split, {}).get("weighted_f1")
                         for s in ("text", "audio", "visual")}}
    out = runs / "report.json"
    atomic.write_json(out, report)
    atomic.write_text(runs / "report.md", markdown(report))
    return out


def _pct(x: float | None) -> str:
    return f"{100 * x:.2f}" if x is not None else "—"


def markdown(report: dict[str, Any]) -> str:
    sel = report["checkpoint"]
    lines = [f"# {report['dataset']}: M2FNet evaluation", "", f"Modalities: {report['modalities']}.", "",
             f"Scores of {report['scored']}: checkpoint {sel['tag']} (step {sel['step']}), {sel['chosen_by']}, "
             f"dev weighted F1 {_pct(sel['best_dev_weighted_f1'])} when chosen. Every row scores the checkpoint "
             f"chosen on dev; the last step's scores stand beside it.", ""]
    for split, m in report["splits"].items():
        last = sel["last_metrics"].get(split, {})
        lines.append(f"- {split}: accuracy {_pct(m['accuracy'])}, weighted F1 {_pct(m['weighted_f1'])}, "
                     f"macro F1 {_pct(m['macro_f1'])} ({m['count']} utterances); last step ({sel['last_step']}): "
                     f"accuracy {_pct(last.get('accuracy'))}, weighted F1 {_pct(last.get('weighted_f1'))}")
    lines += ["", "| modalities | accuracy | weighted F1 | checkpoint (step) | last step: accuracy "
              "| last step: weighted F1 | paper accuracy | paper weighted F1 |", "|---|---|---|---|---|---|---|---|"]
    for row in report["ablation"]:
        pa = f"{row['paper_accuracy']:.2f}" if row["paper_accuracy"] is not None else "—"
        pw = f"{row['paper_weighted_f1']:.2f}" if row["paper_weighted_f1"] is not None else "—"
        lines.append(f"| {row['modalities']} | {_pct(row['accuracy'])} | {_pct(row['weighted_f1'])} | {row['step']} | "
                     f"{_pct(row['last_accuracy'])} | {_pct(row['last_weighted_f1'])} | {pa} | {pw} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="m2fdist report", description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, help="a pipeline's runs folder (holding fusion/, fusion_T/, ...)")
    args = p.parse_args(argv)
    try:
        path = write_report(args.runs)
    except (FileNotFoundError, ValueError) as e:
        print(f"m2fdist report: {e}", file=sys.stderr)
        return 2
    print((args.runs / "report.md").read_text())
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
