"""Training on anyone's labelled dialogs: a manifest in a layout and a label set no code here knows (calm, joyful,
tense), packed text only (JSONL) and with clips (CSV), trains the tiny text stage under deepspeed, exports, is
reported and bundled, and predicts those labels; nothing in the run names MELD's or IEMOCAP's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import MAX_SIDE
from launching import concurrently, deepspeed
from manifests import LABELS, clips_csv, text_jsonl

from m2fdist.cli import main as cli
from m2fdist.data.texts import shard_texts
from m2fdist.inference.export import export
from m2fdist.models.tiny_text import build_tiny_roberta
from m2fdist.pack import PackOptions, pack
from m2fdist.results.bundle import write_bundle
from m2fdist.results.report import write_report


def _train(shards: Path, runs: Path) -> Path:
    """The tiny text stage on the shards (dataset=manifest: its labels come from their index.json), exported."""
    roberta = runs / "roberta"
    build_tiny_roberta(roberta, shard_texts(shards), vocab_size=500, hidden_size=32, num_layers=2)
    out = runs / "text"
    deepspeed("launch/train.py", "configs/tiny/text.yaml",
              [f"data.shards={shards}", "dataset=manifest", f"output_dir={out}", f"text.model={roberta}",
               "wandb.mode=disabled", "train.epochs=4", "data.batch_size=4", "train.class_weights=inverse"],
              runs / "train.log")
    export(out, "best")
    return out


@pytest.mark.launch
def test_manifest_corpora_train_export_report_and_predict_their_labels(meld_raw, iemocap_raw, tmp_path, capsys):
    text_manifest = text_jsonl(meld_raw[0], tmp_path / "episodes.jsonl")
    (tmp_path / "lab").mkdir()
    clip_manifest, _ = clips_csv(meld_raw[0], iemocap_raw[0], tmp_path / "lab" / "clips.csv")
    pack("manifest", text_manifest, tmp_path / "text_shards", options=PackOptions(modalities="text"), progress=False)
    pack("manifest", clip_manifest, tmp_path / "clip_shards", workers=2, progress=False,
         options=PackOptions(max_side=MAX_SIDE, max_seconds=20), reader_options={"dev_fraction": 0.5})
    runs = {kind: tmp_path / f"runs_{kind}" for kind in ("text", "clip")}
    for r in runs.values():
        r.mkdir()
    concurrently(*(lambda k=k: _train(tmp_path / f"{k}_shards", runs[k]) for k in runs))
    for kind, manifest in (("text", text_manifest), ("clip", clip_manifest)):
        run = runs[kind]
        saved = json.loads((run / "text" / "config.json").read_text())
        assert saved["dataset"] == "manifest" and saved["labels"] == list(LABELS) and saved["text"]["num_classes"] == 3
        final = json.loads((run / "text" / "final.json").read_text())
        assert set(final["metrics"]["dev"]["per_class_f1"]) == set(LABELS)
        assert json.loads((run / "text" / "export" / "config.json").read_text())["labels"] == list(LABELS)
        report = json.loads(write_report(run).read_text())
        assert report["dataset"] == "manifest" and set(report["splits"]["test"]["per_class_f1"]) == set(LABELS)
        bundle = write_bundle(run)
        card = (bundle / "README.md").read_text()
        assert "3 emotions: calm, joyful, tense" in card and "Trained on a manifest corpus" in card
        assert json.loads((bundle / "config.json").read_text())["labels"] == list(LABELS)
        # predict reads the training manifest itself (label and split are columns it ignores)
        capsys.readouterr()
        assert cli(["predict", "--model", str(bundle), "--manifest", str(manifest), "--no-progress"]) == 0
        rows = [r for r in json.loads(capsys.readouterr().out) if r.get("emotion")]
        assert rows and all(r["emotion"] in LABELS and set(r["probs"]) == set(LABELS) for r in rows)
    # the one-line error for a MELD-only way of reading input
    assert cli(["predict", "--model", str(runs["text"] / "model"), "--root", str(meld_raw[0])]) == 2
    assert "--manifest FILE" in capsys.readouterr().err
