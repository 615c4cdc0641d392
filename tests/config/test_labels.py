"""A run's labels come from one place, its shards' index.json: what the config checks take, refuse and pass on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from m2fdist.cli import main as cli
from m2fdist.common.labels import MELD_LABELS
from m2fdist.config.errors import ConfigError
from m2fdist.config.load import from_dict, load_config, load_extract_config, read_config
from m2fdist.config.schema import ExtractConfig
from m2fdist.inference.extract import write_features_index
from m2fdist.results.card import model_card

pytestmark = pytest.mark.unit

MOODS = ["calm", "tense", "joyful"]  # not sorted: the index's order is the ids', whatever it is


def shards(folder: Path, dataset: str = "manifest", names: object = MOODS) -> Path:
    """An index.json of packed utterance shards (no shards needed for the config checks)."""
    folder.mkdir(parents=True, exist_ok=True)
    counts = {"calm": 6, "tense": 3, "joyful": 0} if names == MOODS else {}
    index = {"format": 1, "dataset": dataset, "label_names": names, "options": {"modalities": "text"},
             "splits": {s: {"shards": [], "labels": counts} for s in ("train", "dev", "test")}}
    (folder / "index.json").write_text(json.dumps(index))
    return folder


def test_a_manifest_run_takes_its_labels_from_the_shards(tmp_path):
    where = f"data.shards={shards(tmp_path / 's')}"
    before = read_config("configs/tiny/text.yaml", ["dataset=manifest"])  # nothing read yet: no labels
    assert before.label_names == [] and before.num_classes == 0
    cfg = load_config("configs/tiny/text.yaml", [where, "dataset=manifest", "train.class_weights=[1, 2, 3]"])
    assert cfg.labels == MOODS and cfg.text.num_classes == cfg.fusion.num_classes == cfg.num_classes == 3
    # the resolved labels are saved with the run and come back from its config.json (export, report, card)
    assert from_dict(json.loads(json.dumps(cfg.to_dict()))).label_names == MOODS
    load_config("configs/tiny/text.yaml", [where, "dataset=manifest", "labels=[calm,tense,joyful]"])  # equal: fine
    cases = [(["labels=[calm,joyful,tense]"], r"labels=\['calm', 'joyful', 'tense'\], but .* names \['calm', "
                                              r"'tense', 'joyful'\]: leave labels unset"),
             (["train.class_weights=[1, 2]"], "need 3 positive numbers, one per class"),  # checked once labels known
             (["dataset=meld"], r"dataset=meld \(labels neutral, .*\), but .* is for 'manifest'"),
             (["dataset=klingon"], "dataset must be one of meld, iemocap, manifest, not 'klingon'")]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_config("configs/tiny/text.yaml", [where, "dataset=manifest", *overrides])


@pytest.mark.parametrize("names, message", [
    (None, "label names must be|labels must be a non-empty list"), ([], "non-empty list"),
    (["a", "b", "a"], "labels name 'a' more than once"), (["a", 3], "non-empty list of names"),
    (["x"] * 2 + [str(i) for i in range(10_001)], "more than the 10,000 a run may have")])
def test_an_index_naming_no_usable_label_set_is_refused(tmp_path, names, message):
    """index.json is input: shards may come from anyone, and a run builds one output per name."""
    with pytest.raises(ConfigError, match=message):
        load_config("configs/tiny/text.yaml", [f"data.shards={shards(tmp_path / 's', names=names)}",
                                               "dataset=manifest"])


def test_meld_runs_keep_their_fixed_set(tmp_path):
    """Shards saying meld must name MELD's seven in MELD's order; the run's labels are those, before and after."""
    assert read_config("configs/tiny/text.yaml").labels == list(MELD_LABELS)
    cfg = load_config("configs/tiny/text.yaml", [f"data.shards={shards(tmp_path / 'm', 'meld', list(MELD_LABELS))}"])
    assert cfg.labels == list(MELD_LABELS) and cfg.text.num_classes == 7
    with pytest.raises(ConfigError, match="dataset=meld .* with labels"):
        load_config("configs/tiny/text.yaml", [f"data.shards={shards(tmp_path / 'r', 'meld', MOODS)}"])
    # a config saved before configs recorded labels: its corpus's fixed set
    old = {k: v for k, v in cfg.to_dict().items() if k != "labels"}
    assert from_dict(old).label_names == list(MELD_LABELS)


def test_extraction_and_its_features_carry_the_labels(tmp_path):
    src = shards(tmp_path / "s")
    export = tmp_path / "text_export"
    export.mkdir()
    (export / "model.safetensors").write_bytes(b"")
    (export / "config.json").write_text(json.dumps({"run": {"stage": "text"}}))
    cfg = load_extract_config(None, [f"data.shards={src}", "dataset=manifest", f"extract.text={export}"])
    assert cfg.labels == MOODS
    out = tmp_path / "features"
    out.mkdir()
    (out / "train-r000of001.stats.json").write_text(json.dumps(
        {"shard": "train-r000of001.tar", "count": 1, "utterances": 2, "labels": {"tense": 2}, "dims": {"text": 4}}))
    write_features_index(out, cfg, world=1)
    index = json.loads((out / "index.json").read_text())
    assert index["label_names"] == MOODS and index["splits"]["train"]["labels"] == {"calm": 0, "tense": 2,
                                                                                   "joyful": 0}
    assert ExtractConfig().label_names == list(MELD_LABELS)


def test_the_card_of_a_manifest_model(tmp_path):
    run = {"dataset": "manifest", "labels": MOODS, "train": {"seed": 0},
           "text": {"model": "m", "finetune": "full", "context": 0, "input_format": "past"}}
    card = model_card({"dataset": "manifest", "labels": MOODS, "parts": ["text"]}, {"text": {"run": run}}, None)
    assert "one of 3 emotions: calm, tense, joyful" in card and "Trained on a manifest corpus: labelled dialogs" in card
    assert "(the manifest's own dialogs)" in card and "scripted TV" not in card


def test_pack_flags_that_do_not_fit_the_dataset(tmp_path, capsys):
    assert cli(["pack", "meld", "--root", str(tmp_path), "--labels", "a,b"]) == 2
    assert "--labels and --dev-fraction are for manifests" in capsys.readouterr().err
    assert cli(["pack", "manifest", "--root", str(tmp_path)]) == 2
    assert "pack manifest takes --manifest FILE" in capsys.readouterr().err
    assert cli(["pack", "iemocap", "--manifest", str(tmp_path / "m.csv")]) == 2
    assert "pack iemocap takes --root" in capsys.readouterr().err
