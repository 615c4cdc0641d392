"""``RUNS/model``: the stage exports a prediction needs, the bundle's ``config.json`` and its model card.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from m2fdist import __version__
from m2fdist.common import atomic
from m2fdist.common.modalities import fusion_reads
from m2fdist.format.exports import CONFIG, REPORT, is_export, labels_of, read_meta
from m2fdist.format.lineage import MADE_FROM, export_id
from m2fdist.results.card import model_card, public_report


def write_bundle(runs: Path, out: Path | None = None) -> Path:
    """``RUNS/model``: the stage exports a prediction needs, the bundle's ``config.json`` and its model card.

    A pipeline with a fusion stage ships the fusion model and the stage exports it reads (text, audio and visual;
    text alone when the dialog level was trained over text only); a text-only pipeline without a dialog level
    ships text alone (its classifier head predicts). The model card (``README.md``, Hugging Face front matter) is
    generated from the exports' configs and, when the pipeline's ``report.json`` exists, its scores (kept in the
    bundle as ``report.json``, its local paths left out, so that publishing writes the same card anew); call this again
    after the report to refresh the card. The bundle is written whole into a temporary folder beside ``out``
    and then replaces it at once: nothing of an earlier bundle (an earlier run's audio, visual or fusion part)
    survives in it, and a reader never sees a half-written one.
    """
    runs = Path(runs)
    out = Path(out or runs / "model")
    fused = is_export(runs / "fusion" / "export")
    parts = fusion_parts(read_meta(runs / "fusion" / "export")) if fused else ("text",)
    missing = [p for p in parts if not is_export(runs / p / "export")]
    if missing:
        raise FileNotFoundError(f"{runs}: no export of {', '.join(missing)} (m2fdist export {runs}/STAGE)")
    tmp = atomic.temp_dir_for(out)
    try:
        _fill(runs, tmp, parts, fused)
        atomic.publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def fusion_parts(meta: dict) -> tuple[str, ...]:
    """The parts a fusion export needs in a bundle: itself and the extractors of the modalities it reads."""
    return (*fusion_reads(meta["run"]["fusion"]["modalities"]), "fusion")


def _fill(runs: Path, out: Path, parts: tuple[str, ...], fused: bool) -> None:
    """The bundle's parts, card and config, into the (empty) folder ``out``.

    Each part's ``config.json`` is written as :func:`~m2fdist.format.exports.read_meta` gives it, not copied: an
    export written before exports left out local paths, shard URLs and commands still carries them, and a bundle
    is what goes to colleagues and the Hub. The bundle's config records each part's identity (``made_from``).
    """
    metas = {}
    for part in parts:
        shutil.copytree(runs / part / "export", out / part)
        metas[part] = read_meta(out / part)  # through public_meta: the one sanitiser
        atomic.write_json(out / part / CONFIG, metas[part])
    main_meta = metas["fusion" if fused else "text"]
    config = {"format": "m2fdist-bundle", "m2fdist": __version__, "dataset": main_meta["run"]["dataset"],
              "labels": labels_of(main_meta), "parts": list(parts),
              MADE_FROM: {p: export_id(out / p) for p in parts}}
    report_path = runs / "report.json"
    report = public_report(json.loads(report_path.read_text())) if report_path.is_file() else None
    if report is not None:  # the card's scores, kept so that publishing can write the card anew
        atomic.write_json(out / REPORT, report)
    atomic.write_text(out / "README.md", model_card(config, metas, report))
    atomic.write_json(out / CONFIG, config)
