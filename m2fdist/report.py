"""``m2fdist report RUNS``: the evaluation report of a pipeline run.

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

# Test-set accuracy / weighted F1 published in the M2FNet paper (DESIGN §3).
PAPER = {
    "meld": {"T": (67.24, 66.23), "A": (49.04, 39.63), "V": (45.63, 32.44), "T+A+V fused": (67.85, 66.71)},
    "iemocap": {"T": (66.30, 66.20), "A": (26.56, 21.79), "V": (20.39, 13.10), "T+A+V fused": (69.69, 69.86)},
}
ROWS = [("T", "fusion_T"), ("A", "fusion_A"), ("V", "fusion_V"), ("T+A+V concatenated", "fusion_TAV_concat"),
        ("T+A+V fused", "fusion")]
TEXT_ONLY_ROWS = [("T", "text")]
MODALITY_NAMES = {"T": "text", "A": "audio", "V": "visual"}


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
    splits = {}
    for split, m in main["metrics"].items():
        splits[split] = {k: m[k] for k in ("accuracy", "weighted_f1", "macro_f1", "per_class_f1", "support", "count")}
        png = runs / f"confusion_{split}.png"
        confusion_png(m["confusion_matrix"], names, png, f"{dataset} {split}: {modalities}")
        splits[split]["confusion_png"] = str(png)
    split = "test" if "test" in main["metrics"] else next(iter(main["metrics"]))
    ablation = []
    for label, folder in ROWS if stage == "fusion" else TEXT_ONLY_ROWS:
        final = _final(runs / folder)
        if final is None or split not in final["metrics"]:
            continue
        m = final["metrics"][split]
        paper = PAPER.get(dataset, {}).get(label)
        ablation.append({"modalities": label, "run": folder, "split": split, "accuracy": m["accuracy"],
                         "weighted_f1": m["weighted_f1"], "paper_accuracy": paper[0] if paper else None,
                         "paper_weighted_f1": paper[1] if paper else None})
    report = {"dataset": dataset, "modalities": modalities, "splits": splits, "ablation": ablation,
              "stages": {s: (_final(runs / s) or {}).get("metrics", {}).get(split, {}).get("weighted_f1")
                         for s in ("text", "audio", "visual")}}
    out = runs / "report.json"
    out.write_text(json.dumps(report, indent=1))
    (runs / "report.md").write_text(markdown(report))
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# {report['dataset']}: M2FNet evaluation", "", f"Modalities: {report['modalities']}.", ""]
    for split, m in report["splits"].items():
        lines.append(f"- {split}: accuracy {100 * m['accuracy']:.2f}, weighted F1 {100 * m['weighted_f1']:.2f}, "
                     f"macro F1 {100 * m['macro_f1']:.2f} ({m['count']} utterances)")
    lines += ["", "| modalities | accuracy | weighted F1 | paper accuracy | paper weighted F1 |",
              "|---|---|---|---|---|"]
    for row in report["ablation"]:
        pa = f"{row['paper_accuracy']:.2f}" if row["paper_accuracy"] is not None else "—"
        pw = f"{row['paper_weighted_f1']:.2f}" if row["paper_weighted_f1"] is not None else "—"
        ours = f"{100 * row['accuracy']:.2f} | {100 * row['weighted_f1']:.2f}"
        lines.append(f"| {row['modalities']} | {ours} | {pa} | {pw} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="m2fdist report", description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, help="a pipeline's runs folder (holding fusion/, fusion_T/, ...)")
    args = p.parse_args(argv)
    path = write_report(args.runs)
    print((args.runs / "report.md").read_text())
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
