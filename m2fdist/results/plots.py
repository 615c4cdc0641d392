"""The report's figures (matplotlib, drawn off-screen): training curves, confusion matrices, per-class F1.

Figures are built as ``matplotlib.figure.Figure`` objects and saved as PNG through the Agg canvas, never
through pyplot, so no display, GUI backend or global figure state is involved (safe in a headless job).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from m2fdist.common.modalities import STAGES


def _figure(width: float, height: float):
    # here, not at the top: matplotlib costs a second; only the report's figures need it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def row_normalise(matrix: list[list[int]]) -> list[list[float]]:
    """Each true label's row as fractions of its count (a recall per cell); a label with no utterances stays 0."""
    out = []
    for row in matrix:
        total = sum(row)
        out.append([v / total if total else 0.0 for v in row])
    return out


def confusion(matrix: list[list[int]], names: list[str], path: Path, title: str) -> list[list[float]]:
    """Counts beside the row-normalised matrix; returns the normalised rows (what the right panel shows)."""
    norm = row_normalise(matrix)
    n = len(names)
    fig = _figure(2 + 1.2 * n, 1.8 + 0.6 * n)
    fig.suptitle(f"{title}\nrows: true label, columns: predicted")
    for ax, data, what, fmt in zip(fig.subplots(1, 2), (matrix, norm), ("counts", "row-normalised (recall)"),
                                   ("{:d}", "{:.2f}"), strict=True):
        peak = max(1, max(max(r) for r in data)) if what == "counts" else 1.0
        ax.imshow(data, cmap="Blues", vmin=0, vmax=peak)
        ax.set_title(what)
        ax.set_xticks(range(n), [s[:8] for s in names], rotation=45, ha="right")
        ax.set_yticks(range(n), [s[:11] for s in names])
        for i, row in enumerate(data):
            for j, v in enumerate(row):
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=8,
                        color="white" if v > 0.6 * peak else "black")
    fig.savefig(path)
    return norm


def _records(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line torn by a kill
            continue
    return out


def training_curves(runs: Path, path: Path) -> list[str]:
    """Loss and dev weighted F1 over steps, one row per stage, from each run's ``metrics.jsonl``.

    The fusion row also draws the ablation runs (``fusion_*``), which train the same way. Returns the runs
    drawn (none: no figure is written).
    """
    rows: list[tuple[str, list[Path]]] = []
    for stage in STAGES:
        found = [runs / stage] + (sorted(runs.glob("fusion_*")) if stage == "fusion" else [])
        found = [p for p in found if (p / "metrics.jsonl").is_file()]
        if found:
            rows.append((stage, found))
    if not rows:
        return []
    # here, not at the top: matplotlib costs a second; only the report's figures need it
    from matplotlib.ticker import MaxNLocator

    fig = _figure(11, 2.6 * len(rows))
    axes = fig.subplots(len(rows), 2, squeeze=False)
    for (stage, folders), (loss_ax, f1_ax) in zip(rows, axes, strict=True):
        for folder in folders:
            records = _records(folder / "metrics.jsonl")
            # a step skipped as non-finite has no loss
            train = [(r["step"], r["loss"]) for r in records
                     if r.get("kind") == "train" and r.get("loss") is not None]
            dev = [(r["step"], r["weighted_f1"]) for r in records
                   if r.get("kind") == "eval" and r.get("split") == "dev" and "weighted_f1" in r]
            if train:
                loss_ax.plot(*zip(*train, strict=True), label=folder.name, linewidth=1)
            if dev:
                f1_ax.plot(*zip(*dev, strict=True), marker="o", markersize=3, label=folder.name, linewidth=1)
        loss_ax.set_title(f"{stage}: training loss")
        f1_ax.set_title(f"{stage}: dev weighted F1")
        for ax in (loss_ax, f1_ax):
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
    fig.savefig(path)
    return [f.name for _, folders in rows for f in folders]


def per_class_f1(rows: list[tuple[str, dict[str, float]]], names: list[str], path: Path, title: str) -> None:
    """Grouped bars: per class, one bar per ablation row."""

    fig = _figure(max(7.0, 1.1 * len(names) + 2), 4)
    ax = fig.subplots()
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(names))
    for k, (label, f1) in enumerate(rows):
        ax.bar(x + (k - (len(rows) - 1) / 2) * width, [f1.get(n, 0.0) for n in names], width, label=label)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)
