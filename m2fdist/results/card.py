"""The model card of an exported bundle: ``README.md`` with Hugging Face front matter.

A colleague (or the Hub page) reads what the model was trained on, how, how well, and what it is not for,
without the runs folder it came from. Everything is generated from the exports' saved configs and, when the
pipeline wrote one, its ``report.json``; a card goes to the Hub, so it names no local path, shard location,
command or account (the configs are read through :func:`~m2fdist.format.exports.public_meta`, the report
through :func:`public_report`). Publishing writes it anew from these, so a card is never re-uploaded as found.
"""

from __future__ import annotations

import copy
from pathlib import PurePath
from typing import Any

from m2fdist.common.modalities import NAME_OF
from m2fdist.format.exports import LOCAL_TEXT_MODEL, public_meta
from m2fdist.results.report import markdown, pct

SPLITS = {
    "meld": "MELD's own train / dev / test splits (1038 / 114 / 280 dialogs in the full corpus).",
    "iemocap": "IEMOCAP sessions 1–4 train, with a seeded 10% of their dialogs held out as dev; session 5 is test. "
               "The six ERC labels are kept (neu, hap, sad, ang, exc, fru); other turns are left out.",
    "manifest": "labelled dialogs of a CSV / JSONL manifest (`m2fdist pack manifest`), in the train / dev / test "
                "splits it gives (or with a seeded fraction of its dialogs held out as dev); the label set is its own.",
}
TITLES = {"meld": "MELD", "iemocap": "IEMOCAP", "manifest": "a manifest corpus"}
# What the training dialogs were, for the card's intended use: a manifest corpus is whatever its author packed.
KINDS = {"meld": "English, scripted TV scenes", "iemocap": "English, acted dyadic sessions",
         "manifest": "the manifest's own dialogs"}


def _front_matter(config: dict[str, Any]) -> list[str]:
    tags = ["emotion-recognition-in-conversation", "m2fnet", config["dataset"],
            *(["multimodal"] if "fusion" in config["parts"] else ["text-classification"])]
    return ["---", "library_name: m2fdist", "language:", "- en", "tags:", *(f"- {t}" for t in tags), "datasets:",
            f"- {config['dataset']}", "metrics:", "- accuracy", "- f1", "---", ""]


def _config_rows(metas: dict[str, dict[str, Any]]) -> list[str]:
    """One table row per stage: its checkpoint and the settings a reader asks about first."""
    rows = ["| part | checkpoint | settings |", "|---|---|---|"]
    for part, meta in metas.items():
        run = meta["run"]
        if part == "text":
            t = run["text"]
            model = "a local model (its config and tokenizer: text/text_encoder/)" if t["model"] == LOCAL_TEXT_MODEL \
                else t["model"]
            settings = (f"`text.model` {model}, fine-tuning {t['finetune']}, context {t['context']} turns "
                        f"each side, input format {t['input_format']}")
            if meta.get("text_weights"):
                settings += f" ({meta['text_weights']})"
        elif part == "audio":
            settings = f"mel-spectrogram ResNet18, first {run['audio']['seconds']:g} s of each utterance"
        elif part == "visual":
            settings = f"face + scene ResNet18, {run['data']['num_frames']} frames per utterance"
        else:
            f = run["fusion"]
            settings = (f"modalities {f['modalities']}, fusion {f['fusion']}, N={f['num_layers']} dialog layers, "
                        f"m={f['num_fusion_layers']} fusion layers")
        rows.append(f"| {part} | {meta.get('tag', '—')} (seed {run.get('train', {}).get('seed', '—')}) | {settings} |")
    return rows


def public_report(report: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's ``report.json`` as a bundle carries it (``model/report.json``, what its card's scores are
    made from): the runs folder it names and its figures' local paths left out.

    A bundle keeps it so that publishing (``save_pretrained``, ``push_to_hub``) writes the card anew from the
    bundle's configs and these scores, never re-uploading a card as it was found (one written before cards
    left out local paths and shard URLs carried them).
    """
    report = copy.deepcopy(report)
    prefix, scored = "the exported model ", str(report.get("scored", ""))
    if scored.startswith(prefix) and not scored.endswith(")"):  # names its runs folder: keep the export's part
        report["scored"] = f"{prefix}({'/'.join(PurePath(scored[len(prefix):]).parts[-2:])})"
    for split in (report.get("splits") or {}).values():
        if isinstance(split, dict) and isinstance(split.get("confusion_png"), str):
            split["confusion_png"] = PurePath(split["confusion_png"]).name
    return report


def _scores(report: dict[str, Any], labels: list[str]) -> list[str]:
    report = public_report(report)
    splits = report["splits"]
    lines = ["## Evaluation", "", f"Modalities: {report['modalities']}.", "",
             "| split | accuracy | weighted F1 | macro F1 | utterances |", "|---|---|---|---|---|"]
    lines += [f"| {s} | {pct(m['accuracy'])} | {pct(m['weighted_f1'])} | {pct(m['macro_f1'])} | {m['count']} |"
              for s, m in splits.items()]
    lines += ["", "### Per-class F1", "", "| label | " + " | ".join(splits) + " |",
              "|---|" + "---|" * len(splits)]
    lines += [f"| {n} | " + " | ".join(pct(m["per_class_f1"].get(n)) for m in splits.values()) + " |"
              for n in labels]
    lines += ["", "### The pipeline's report", ""]
    lines += [ln.replace("# ", "#### ", 1) if ln.startswith("# ") else ln for ln in markdown(report).splitlines()]
    return lines + [""]


def model_card(config: dict[str, Any], metas: dict[str, dict[str, Any]], report: dict[str, Any] | None) -> str:
    """The card's markdown: front matter, data, configuration, scores, usage, intended use and limits."""
    dataset, labels = config["dataset"], config["labels"]
    metas = {part: public_meta(meta) for part, meta in metas.items()}  # exports written before they left these out
    main = metas.get("fusion") or metas["text"]
    mods = main["run"]["fusion"]["modalities"] if "fusion" in metas else "T"
    reads = " + ".join(NAME_OF[m] for m in mods)
    lines = _front_matter(config)
    lines += [f"# M2FNet for emotion recognition in conversation ({dataset})", "",
              "An M2FNet model (Chudasama et al., CVPR 2022 MULA workshop, arXiv 2206.02187) trained with m2fdist. "
              f"It gives every utterance of a dialog one of {len(labels)} emotions: {', '.join(labels)}. "
              f"It reads each utterance's {reads}" + (" with its neighbours' text." if "T" in mods else "."), "",
              "## Data", "", f"Trained on {TITLES.get(dataset, dataset)}: {SPLITS.get(dataset, '')}",
              "Shards packed from it with `m2fdist pack`; the checkpoint of each stage was chosen by dev weighted F1.",
              "", "## Configuration", "", *_config_rows(metas), ""]
    if report is not None:
        lines += _scores(report, labels)
    else:
        lines += ["## Evaluation", "", "No report was written for this bundle (`m2fdist report RUNS`, then "
                  "`m2fdist export --bundle RUNS`, adds the scores here).", ""]
    lines += ["## Use", "", "```python", "from m2fdist import M2FNet", "",
              'model = M2FNet.from_pretrained("PATH_OR_HUB_ID")',
              'dialogs = [[{"speaker": "A", "text": "You did what?", "video": "clips/d1_u0.mp4"},',
              '            {"speaker": "B", "text": "I sold the car.", "video": "clips/d1_u1.mp4"}]]',
              "for utt in model.predict(dialogs)[0]:", '    print(utt["emotion"], utt["probs"])', "```", "",
              "Or `m2fdist predict --model PATH --manifest dialogs.csv`.", "",
              "## Intended use and limits", "",
              "- Research on emotion recognition in conversation: scoring dialogs like the training data "
              f"({KINDS.get(dataset, 'its own dialogs')}), comparing with M2FNet's published numbers, ablations.",
              "- Not for decisions about people (hiring, health, policing, surveillance): emotion labels from "
              "acted or scripted speech do not transfer reliably to real people, cultures or recording conditions.",
              "- Its labels are the training corpus's; an utterance showing another emotion still gets one of them.",
              "- Rare classes score much lower than frequent ones (see the per-class F1); a single run's number "
              "moves by a point or more between seeds.",
              "- Audio is read up to the audio model's length; video through a fixed number of sampled frames.", ""]
    return "\n".join(lines)
