"""``m2fdist report RUNS``: the evaluation report of a pipeline run.

Every score is that of the checkpoint chosen on dev, the one ``m2fdist export`` ships; the fused model's
are computed from its export, so ``m2fdist eval`` and ``m2fdist predict`` of that export agree with them.
The last step's scores are kept beside them, named as such.

Writes ``RUNS/report.json`` (accuracy, weighted and macro F1, per-class F1 and the confusion matrix, counts
and row-normalised, for each split) and the modality ablation table (T, A, V, T+A+V concatenated,
T+A+V fused) next to the paper's numbers, also as ``RUNS/report.md``, which links the figures written beside
it: ``confusion_SPLIT.png`` (counts beside the row-normalised matrix), ``training_curves.png`` (loss and dev
weighted F1 over steps from every run's ``metrics.jsonl``) and ``per_class_f1.png`` (per-class F1 of each
ablation row). A text-only run is reported from its dialog level beside its text stage alone (without a
dialog level, from its text stage); the report names the
modalities it covers.

A pipeline run over several seeds (``RUNS/seed0``, ``RUNS/seed1``, ...) is reported per seed in each folder,
and ``RUNS/report.json`` / ``report.md`` give every ablation row as mean ± standard deviation over the seeds
with each seed's value (:func:`write_seed_report`).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from m2fdist.common import atomic
from m2fdist.common.labels import run_labels
from m2fdist.common.modalities import NAME_OF as MODALITY_NAMES
from m2fdist.common.modalities import NAMES
from m2fdist.config.load import run_config
from m2fdist.format.exports import is_export
from m2fdist.format.lineage import MADE_FROM, export_id, read_record, shards_id
from m2fdist.inference.evaluate import evaluate_export
from m2fdist.results import plots

# Test-set accuracy / weighted F1 published in the M2FNet paper.
PAPER = {
    "meld": {"T": (67.24, 66.23), "A": (49.04, 39.63), "V": (45.63, 32.44), "T+A+V fused": (67.85, 66.71)},
    "iemocap": {"T": (66.30, 66.20), "A": (26.56, 21.79), "V": (20.39, 13.10), "T+A+V fused": (69.69, 69.86)},
}


ROWS = [("T", "fusion_T"), ("A", "fusion_A"), ("V", "fusion_V"), ("T+A+V concatenated", "fusion_TAV_concat"),
        ("T+A+V fused", "fusion")]


TEXT_ONLY_ROWS = [("T", "text")]
# A text-only pipeline with M2FNet's dialog level: the text stage alone, then the dialog level over its vectors
# (the paper's "text only" row is M2FNet's, dialog level included).
TEXT_DIALOG_ROWS = [("T (text stage alone)", "text"), ("T", "fusion")]


def covered(stage: str, cfg: dict[str, Any]) -> str:
    """The modalities the reported model sees, in words."""
    if stage == "text":
        return "text only (the text stage; no audio or visual)"
    mods = cfg["fusion"]["modalities"]
    if mods == "T":
        return "text only (the dialog level over the text stage's utterance vectors; no audio or visual)"
    how = "attention fusion" if cfg["fusion"].get("fusion") == "attention" else cfg["fusion"].get("fusion", "")
    return f"{', '.join(MODALITY_NAMES[m] for m in mods)} ({how})"


def rows_of(stage: str, cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """The report's rows (label, run folder) for the reported model's stage and config."""
    if stage == "text":
        return TEXT_ONLY_ROWS
    return TEXT_DIALOG_ROWS if cfg["fusion"]["modalities"] == "T" else ROWS


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


def shipped_scores(runs: Path, stage: str, final: dict[str, Any]) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """The reported model's scores per split, computed from the export that ships (``RUNS/model`` or
    ``RUNS/STAGE/export``) on the shards it was trained on; the training run's own best-checkpoint scores when
    there is no export yet. Also what the scores were made from: the export's and the shards' identities."""
    shards = run_config(runs / stage).data.shards
    candidates = ([runs / "model" / "fusion"] if stage == "fusion" else []) + [runs / stage / "export"]
    for model in candidates:
        if is_export(model):
            scores = {split: evaluate_export(model, shards, split)[0]
                      for split in final["metrics"]}
            return scores, f"the exported model {model}", {"model": export_id(model), "data": shards_id(shards)}
    return (final["metrics"], f"the {stage} run's best checkpoint (not exported yet)",
            {"run": read_record(runs / stage)})


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

    names = run_labels(dataset, cfg.get("labels"))  # what the run trained on: its shards' label_names
    scores, scored, made_from = shipped_scores(runs, stage, main)
    splits = {}
    for split, m in scores.items():
        splits[split] = {k: m[k] for k in ("accuracy", "weighted_f1", "macro_f1", "per_class_f1", "support", "count",
                                           "confusion_matrix")}
        png = runs / f"confusion_{split}.png"
        norm = plots.confusion(m["confusion_matrix"], names, png, f"{dataset} {split}: {modalities}")
        splits[split].update(confusion_normalized=norm, confusion_png=str(png))
    split = "test" if "test" in scores else next(iter(scores))
    ablation = []
    for label, folder in rows_of(stage, cfg):
        final = _final(runs / folder)
        if final is None or split not in final["metrics"]:
            continue
        m = scores[split] if folder == stage else final["metrics"][split]
        sel = _selection(final)
        last = sel["last_metrics"].get(split, {})
        paper = PAPER.get(dataset, {}).get(label)
        ablation.append({"modalities": label, "run": folder, "split": split, "accuracy": m["accuracy"],
                         "weighted_f1": m["weighted_f1"], "per_class_f1": m["per_class_f1"],
                         "checkpoint": sel["tag"], "step": sel["step"],
                         "last_step": sel["last_step"], "last_accuracy": last.get("accuracy"),
                         "last_weighted_f1": last.get("weighted_f1"),
                         "paper_accuracy": paper[0] if paper else None,
                         "paper_weighted_f1": paper[1] if paper else None,
                         MADE_FROM: read_record(runs / folder)})  # its data's identity, where the run recorded it
    report = {"dataset": dataset, "modalities": modalities, "scored": scored, MADE_FROM: made_from,
              "checkpoint": _selection(main),
              "splits": splits, "ablation": ablation,
              "stages": {s: (_final(runs / s) or {}).get("metrics", {}).get(split, {}).get("weighted_f1")
                         for s in NAMES},
              "figures": figures(runs, names, dataset, split, ablation)}
    out = runs / "report.json"
    atomic.write_json(out, report)
    atomic.write_text(runs / "report.md", markdown(report))
    return out


def figures(runs: Path, names: list[str], dataset: str, split: str, ablation: list[dict[str, Any]]) -> dict[str, str]:
    """Training curves and per-class F1 bars, written beside report.md; their file names."""
    out = {}
    if plots.training_curves(runs, runs / "training_curves.png"):
        out["training_curves"] = "training_curves.png"
    if ablation:
        plots.per_class_f1([(r["modalities"], r["per_class_f1"]) for r in ablation], names,
                           runs / "per_class_f1.png", f"{dataset} {split}: per-class F1 of each ablation row")
        out["per_class_f1"] = "per_class_f1.png"
    return out


def pct(x: float | None) -> str:
    """A score in [0, 1] as a percentage with two decimals; "—" for a missing one (None, or not a number)."""
    return f"{100 * x:.2f}" if isinstance(x, int | float) and not isinstance(x, bool) else "—"


def markdown(report: dict[str, Any]) -> str:
    sel = report["checkpoint"]
    lines = [f"# {report['dataset']}: M2FNet evaluation", "", f"Modalities: {report['modalities']}.", "",
             f"Scores of {report['scored']}: checkpoint {sel['tag']} (step {sel['step']}), {sel['chosen_by']}, "
             f"dev weighted F1 {pct(sel['best_dev_weighted_f1'])} when chosen. Every row scores the checkpoint "
             f"chosen on dev; the last step's scores stand beside it.", ""]
    for split, m in report["splits"].items():
        last = sel["last_metrics"].get(split, {})
        lines.append(f"- {split}: accuracy {pct(m['accuracy'])}, weighted F1 {pct(m['weighted_f1'])}, "
                     f"macro F1 {pct(m['macro_f1'])} ({m['count']} utterances); last step ({sel['last_step']}): "
                     f"accuracy {pct(last.get('accuracy'))}, weighted F1 {pct(last.get('weighted_f1'))}")
    lines += ["", "| modalities | accuracy | weighted F1 | checkpoint (step) | last step: accuracy "
              "| last step: weighted F1 | paper accuracy | paper weighted F1 |", "|---|---|---|---|---|---|---|---|"]
    for row in report["ablation"]:
        pa = f"{row['paper_accuracy']:.2f}" if row["paper_accuracy"] is not None else "—"
        pw = f"{row['paper_weighted_f1']:.2f}" if row["paper_weighted_f1"] is not None else "—"
        lines.append(f"| {row['modalities']} | {pct(row['accuracy'])} | {pct(row['weighted_f1'])} | {row['step']} | "
                     f"{pct(row['last_accuracy'])} | {pct(row['last_weighted_f1'])} | {pa} | {pw} |")
    figs = [f"![confusion matrix, {split}: counts and row-normalised](confusion_{split}.png)"
            for split in report["splits"]]
    named = report.get("figures", {})
    if "per_class_f1" in named:
        figs.append(f"![per-class F1 of each ablation row]({named['per_class_f1']})")
    if "training_curves" in named:
        figs.append(f"![training curves: loss and dev weighted F1 over steps]({named['training_curves']})")
    lines += ["", "## Figures"]
    for fig in figs:
        lines += ["", fig]
    return "\n".join(lines) + "\n"


def seed_folders(runs: Path) -> dict[int, Path]:
    """A multi-seed pipeline's per-seed run folders (``RUNS/seedN``), by seed."""
    found = {}
    for p in Path(runs).glob("seed*"):
        if p.is_dir() and p.name[4:].isdigit():
            found[int(p.name[4:])] = p
    return dict(sorted(found.items()))


def _spread(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1; 0 for a single value) of per-seed scores."""

    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def aggregate(reports: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Each ablation row over the seeds: accuracy and weighted F1 as mean, sample std and per-seed values.

    A row missing from some seed's report (that run did not finish) is aggregated over the seeds that have it;
    each row lists its seeds.
    """
    if not reports:
        raise ValueError("no per-seed reports to aggregate")
    seeds = sorted(reports)
    first = reports[seeds[0]]
    labels = list(dict.fromkeys(r["modalities"] for s in seeds for r in reports[s]["ablation"]))
    rows = []
    for label in labels:
        found = {s: r for s in seeds for r in reports[s]["ablation"] if r["modalities"] == label}
        have = sorted(found)
        row = {"modalities": label, "split": found[have[0]]["split"], "seeds": have,
               "paper_accuracy": found[have[0]].get("paper_accuracy"),
               "paper_weighted_f1": found[have[0]].get("paper_weighted_f1")}
        for metric in ("accuracy", "weighted_f1"):
            row[metric] = _spread([found[s][metric] for s in have])
        rows.append(row)
    return {"dataset": first["dataset"], "modalities": first["modalities"], "seeds": seeds,
            "std": "sample standard deviation over seeds (n - 1)", "ablation": rows}


def seeds_markdown(agg: dict[str, Any]) -> str:
    seeds = agg["seeds"]
    lines = [f"# {agg['dataset']}: M2FNet evaluation over {len(seeds)} seeds ({', '.join(map(str, seeds))})", "",
             f"Modalities: {agg['modalities']}. Each row: mean ± sample standard deviation over the seeds, then "
             "each seed's value; every value is the checkpoint chosen on dev of that seed's run "
             "(seed folders: " + ", ".join(f"[seed{s}](seed{s}/report.md)" for s in seeds) + ").", "",
             "| modalities | split | accuracy | weighted F1 | accuracy per seed | weighted F1 per seed "
             "| paper accuracy | paper weighted F1 |", "|---|---|---|---|---|---|---|---|"]
    for row in agg["ablation"]:
        acc, wf1 = row["accuracy"], row["weighted_f1"]
        per = [", ".join(f"{s}: {pct(v)}" for s, v in zip(row["seeds"], m["values"], strict=True)) for m in (acc, wf1)]
        pa = f"{row['paper_accuracy']:.2f}" if row["paper_accuracy"] is not None else "—"
        pw = f"{row['paper_weighted_f1']:.2f}" if row["paper_weighted_f1"] is not None else "—"
        lines.append(f"| {row['modalities']} | {row['split']} | {pct(acc['mean'])} ± {pct(acc['std'])} | "
                     f"{pct(wf1['mean'])} ± {pct(wf1['std'])} | {per[0]} | {per[1]} | {pa} | {pw} |")
    return "\n".join(lines) + "\n"


def write_seed_report(runs: Path, folders: dict[int, Path] | None = None) -> Path:
    """Report every seed's run folder, then ``RUNS/report.json`` and ``report.md`` over the seeds."""
    runs = Path(runs)
    folders = folders if folders is not None else seed_folders(runs)
    reports = {s: json.loads(write_report(folder).read_text()) for s, folder in folders.items()}
    agg = aggregate(reports)
    agg["reports"] = {str(s): str(folder / "report.json") for s, folder in folders.items()}
    out = runs / "report.json"
    atomic.write_json(out, agg)
    atomic.write_text(runs / "report.md", seeds_markdown(agg))
    return out
