"""Exports and bundles from elsewhere: a malformed config or weights file is one line naming it, labels are one
name per output, and what an export tells whoever loads it leaves out the training machine's paths, shard URLs,
commands and W&B account, while it still loads and predicts."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from m2fdist.cli import main as cli
from m2fdist.common.labels import LABELS
from m2fdist.config.load import from_dict
from m2fdist.config.schema import RunConfig
from m2fdist.format.exports import (
    CONFIG,
    LOCAL_TEXT_MODEL,
    PRIVATE_KEYS,
    WEIGHTS,
    labels_of,
    load_weights,
    public_meta,
    read_meta,
    weights_header,
)
from m2fdist.models.visual import read_weights

pytestmark = pytest.mark.unit

SECRET = "X-Amz-Signature=deadbeef"


def test_duplicate_labels_are_refused():
    """Two outputs named alike: their probabilities collapsed onto one name in every prediction."""
    with pytest.raises(ValueError, match=r"labels name 'joy' more than once: \['neutral', 'joy', 'joy'\]"):
        labels_of({"labels": ["neutral", "joy", "joy"], "run": {"dataset": "meld"}})
    with pytest.raises(ValueError, match=r"its dataset 'klingon' is none of"):  # was KeyError: 'klingon'
        labels_of({"run": {"dataset": "klingon"}})
    assert labels_of({"labels": ["a", "b"], "run": {}}) == ["a", "b"]


@pytest.mark.parametrize("content, message", [
    (b'{"run": {', r"config.json: not JSON \(Expecting property name enclosed in double quotes, line 1 column 10\)"),
    (b"[" * 100_000 + b"]" * 100_000, r"config.json: JSON nested too deeply to be a config"),  # was RecursionError
    (b'{"run": "\xff"}', r"config.json: not UTF-8 text, so not JSON"),
    (b'{"run": [1]}', r"config.json: not an export's config \(no run config in it\)"),
    (b" " * (17 << 20), r"config.json: 17,825,792 bytes, too large for a config file"),
])
def test_an_export_config_that_is_not_one_names_the_file(tmp_path, content, message):
    (tmp_path / WEIGHTS).write_bytes(b"")
    (tmp_path / CONFIG).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_meta(tmp_path)


def safetensors_bytes(tmp_path: Path) -> bytes:
    save_file({"a": torch.zeros(3), "b": torch.ones(2, 2, dtype=torch.bfloat16)}, str(tmp_path / "ok.safetensors"))
    return (tmp_path / "ok.safetensors").read_bytes()


def with_header(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize("make, message", [
    (lambda good: b"", r"0 bytes, shorter than the header's 8-byte length"),
    (lambda good: b"not a safetensors file", r"its header claims [\d,]+ bytes, in a file of 22"),
    (lambda good: struct.pack("<Q", 10**15) + b"{}", r"its header claims 1,000,000,000,000,000 bytes"),
    (lambda good: struct.pack("<Q", 5) + b"{notj", r"its header is not JSON"),
    (lambda good: struct.pack("<Q", 4) + b"[1] ", r"its header is not a JSON object"),
    (lambda good: good[:-4], r"its tensors cover 20 bytes of data, the file holds 16"),
    (lambda good: with_header({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 99]}}, bytes(99)),
     r"tensor 'a': 99 bytes for a F32 tensor of shape \[3\]"),
    (lambda good: with_header({"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 1]}}, bytes(1)),
     r"tensor 'a': unknown dtype 'Q9'"),
    (lambda good: with_header({"a": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]}}, bytes(1)),
     r"tensor 'a': shape \[-1\] is not a list of sizes"),
    (lambda good: with_header({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                               "b": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, bytes(1)),
     r"tensor 'b': data starts at byte 0, not 1"),
    (lambda good: with_header({"__metadata__": {"k": 1}}), r"its __metadata__ is not a mapping of strings"),
])
def test_a_malformed_safetensors_file_is_one_line_naming_it(tmp_path, make, message):
    """safetensors' SafetensorError was a traceback through predict, eval and from_pretrained."""
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(make(safetensors_bytes(tmp_path)))
    for read in (weights_header, load_weights, read_weights):  # read_weights: visual.face_init / scene_init files
        with pytest.raises(ValueError, match=rf"^{bad}: not a well-formed safetensors file \({message}"):
            read(bad)


def test_a_well_formed_safetensors_file_reads_as_it_was_written(tmp_path):
    path = tmp_path / "ok.safetensors"
    safetensors_bytes(tmp_path)
    assert weights_header(path) == {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
                                    "b": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [12, 20]}}
    state = load_weights(path)
    assert torch.equal(state["a"], torch.zeros(3)) and state["b"].dtype == torch.bfloat16
    with pytest.raises(FileNotFoundError, match="weights file .*nope.safetensors not found"):
        load_weights(tmp_path / "nope.safetensors")


def private_run(tmp_path: Path, text_model: str) -> dict:
    """A run config as a training machine holds it: local paths, a signed shard URL, commands, an account."""
    cfg = RunConfig(stage="text", output_dir=str(tmp_path / "runs" / "text"), resume=str(tmp_path / "ckpt"),
                    deepspeed=str(tmp_path / "ds.json"))
    cfg.data.shards = f"s3://bucket/meld?{SECRET}"
    cfg.data.s3_command = f"sh -c 'id > {tmp_path / 'owned'}'"
    cfg.data.gs_command = "gsutil -o Credentials:secret cat {url}"
    cfg.wandb.entity, cfg.wandb.name = "alice-private-team", "alice's run"
    cfg.text.model = text_model
    cfg.visual.face_init = str(tmp_path / "weights" / "face.safetensors")
    cfg.visual.faces = str(tmp_path / "faces")
    return cfg.to_dict()


def leaks(text: str, tmp_path: Path) -> list[str]:
    return [s for s in (str(tmp_path), SECRET, "s3://", "sh -c", "Credentials", "alice") if s in text]


def test_public_meta_leaves_out_paths_commands_urls_and_accounts(tmp_path):
    meta = {"run": private_run(tmp_path, str(tmp_path / "roberta")), "tag": "global_step4", "stage": "text"}
    public = public_meta(meta)
    assert leaks(json.dumps(meta), tmp_path) and not leaks(json.dumps(public), tmp_path)
    run = public["run"]
    assert run["text"]["model"] == LOCAL_TEXT_MODEL and run["visual"]["face_init"] == "face.safetensors"
    assert run["visual"]["faces"] == "auto" and "shards" not in run["data"] and "wandb" not in run
    assert public_meta(public) == public  # idempotent: read_meta applies it to what export already cleaned
    # what loading needs is kept, and a saved config still loads with the schema's defaults for the rest
    cfg = from_dict(run, "public")
    assert (cfg.stage, cfg.dataset, cfg.text.finetune, cfg.data.s3_command) == ("text", "meld", "full",
                                                                               RunConfig().data.s3_command)
    # a Hub id says which encoder was fine-tuned: it stays
    assert public_meta({"run": private_run(tmp_path, "FacebookAI/roberta-base")})["run"]["text"]["model"] == \
        "FacebookAI/roberta-base"
    assert all(k.rpartition(".")[2] not in run.get(k.rpartition(".")[0], run) for k in PRIVATE_KEYS)


def test_every_string_key_of_a_run_config_is_private_or_plain():
    """A new string key must be placed: dropped or rewritten by public_meta, or a plain value that names no place."""
    plain = {"stage", "dataset", "precision", "data.train_split", "data.train_bad_shards", "text.pooling",
             "text.input_format", "text.finetune", "text.attn_implementation", "text.torch_dtype",
             "text.padding_side", "visual.branches", "visual.face_backbone", "fusion.modalities", "fusion.fusion",
             "triplet.mining", "triplet.recipe", "train.class_weights", "train.requeue", "train.nonfinite"}
    rewritten = {"text.model", "visual.face_init", "visual.scene_init", "visual.faces"}
    found = set()
    for key, value in RunConfig().to_dict().items():
        for name, v in (value.items() if isinstance(value, dict) else [("", value)]):
            if isinstance(v, str) and not key.startswith("wandb"):
                found.add(f"{key}.{name}" if name else key)
    assert found == plain | rewritten | (set(PRIVATE_KEYS) - {"wandb"})


@pytest.fixture(scope="module")
def text_export(tmp_path_factory) -> Path:
    """A text stage's export written in-process the way `m2fdist export` writes one (tiny RoBERTa), its run config
    carrying the training machine's private settings into public_meta."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from m2fdist.inference.export import export_meta
    from m2fdist.models.text import TextModel, model_kwargs
    from m2fdist.models.tiny_text import build_tiny_roberta

    base = tmp_path_factory.mktemp("export")
    roberta = base / "roberta"
    build_tiny_roberta(roberta, ["you did what", "i sold the car", "oh my god", "hello there"] * 20, vocab_size=200,
                       hidden_size=32, num_layers=1)
    run = private_run(base, str(roberta))
    cfg = from_dict(run)
    kwargs = {k: v for k, v in model_kwargs(cfg.text, AutoConfig.from_pretrained(roberta)).items() if k != "dtype"}
    encoder = AutoModel.from_config(AutoConfig.from_pretrained(roberta), **kwargs)  # as the loader builds it
    model = TextModel(encoder, AutoTokenizer.from_pretrained(roberta), cfg.text, LABELS["meld"])
    out = base / "export"
    out.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / WEIGHTS))
    (out / CONFIG).write_text(json.dumps(export_meta(cfg, "step00000004")))  # what m2fdist export writes
    AutoConfig.from_pretrained(roberta).save_pretrained(out / "text_encoder")
    AutoTokenizer.from_pretrained(roberta).save_pretrained(out / "text_encoder")
    return out


def test_a_public_export_loads_predicts_and_shares_without_the_private_settings(text_export, tmp_path):
    from m2fdist import M2FNet
    from m2fdist.inference.load import load_exported

    base = text_export.parent
    cfg, model = load_exported(text_export)
    assert cfg.text.model == LOCAL_TEXT_MODEL and cfg.data.s3_command == RunConfig().data.s3_command
    bundle = M2FNet.from_pretrained(text_export)
    out = bundle.predict([[{"speaker": "A", "text": "you did what"}, {"speaker": "B", "text": "i sold the car"}]])
    assert [set(r["probs"]) for r in out[0]] == [set(LABELS["meld"])] * 2
    bundle.save_pretrained(tmp_path / "shared")  # what push_to_hub uploads
    files = [p for p in (tmp_path / "shared").rglob("*") if p.is_file() and p.suffix != ".safetensors"]
    assert {p.name for p in files} >= {"README.md", CONFIG, "tokenizer.json"}
    assert not [p for p in files if leaks(p.read_text(), base)]
    assert "`text.model` a local model (its config and tokenizer: text/text_encoder/)" in \
        (tmp_path / "shared" / "README.md").read_text()


def test_an_export_written_before_still_loads_without_its_private_settings(text_export, tmp_path):
    """read_meta cleans what older exports carried: a bundle's own s3_command is never what eval runs."""
    import shutil

    from m2fdist.results.card import model_card

    old = tmp_path / "old"
    shutil.copytree(text_export, old)
    meta = json.loads((old / CONFIG).read_text())
    meta["run"] = private_run(tmp_path, str(tmp_path / "roberta"))
    (old / CONFIG).write_text(json.dumps(meta))
    assert leaks((old / CONFIG).read_text(), tmp_path) and not leaks(json.dumps(read_meta(old)), tmp_path)
    scored = f"the exported model {tmp_path / 'runs' / 'text' / 'export'}"
    report = {"dataset": "meld", "modalities": "T", "scored": scored,
              "checkpoint": {"tag": "global_step4", "step": 4, "chosen_by": "best checkpoint on dev",
                             "best_dev_weighted_f1": 0.5, "last_step": 4, "last_metrics": {}},
              "splits": {"test": {"accuracy": 0.5, "weighted_f1": 0.5, "macro_f1": 0.4, "count": 8,
                                  "per_class_f1": {}}}, "ablation": [], "figures": {}}
    card = model_card({"dataset": "meld", "labels": list(LABELS["meld"]), "parts": ["text"]}, {"text": meta}, report)
    assert not leaks(card, tmp_path) and "Scores of the exported model (text/export)" in card


def test_a_broken_bundle_is_one_line_through_predict(text_export, tmp_path, capsys):
    """Each was a traceback (JSONDecodeError from huggingface_hub's mixin, RecursionError, omegaconf's errors), and
    so was a manifest field past csv's limit (csv.Error)."""
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(text_export, bundle / "text")
    (bundle / CONFIG).write_text(json.dumps({"format": "m2fdist-bundle", "parts": ["text"]}))
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"dialog,utt,text\n1,0,hello there\n1,1,{'z' * 200_000}\n")  # a field past csv's limit
    # (a malformed model.safetensors or text_encoder/config.json goes through inference/load.py, which is to read
    # them with load_weights and read_json)
    cases = [(bundle / CONFIG, b"{,", rf"error: {bundle / CONFIG}: not JSON \(Expecting property name"),
             (bundle / CONFIG, b"[1]", rf"error: {bundle / CONFIG}: not a bundle's config"),
             (bundle / "text" / CONFIG, b"[" * 50_000, r"text/config.json: JSON nested too deeply"),
             (bundle / "text" / CONFIG, b'{"run": {"train": {"lr": "fast"}}}',
              r"config error: .*key train.lr: Value 'fast' of type 'str'"),
             (bundle / "text" / "x", b"", "")]  # the bundle whole again: it predicts
    for path, content, message in cases:
        good = path.read_bytes() if path.exists() else None
        path.write_bytes(content)
        rc = cli(["predict", "--model", str(bundle), "--manifest", str(manifest), "--no-progress"])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        if message:
            assert rc == 2 and re.search(message, err.strip().splitlines()[-1]), err
        else:
            rows = json.loads(out)  # the long field costs its row, named, not the run
            assert rc == 0 and rows[0]["emotion"] in LABELS["meld"] and rows[1]["skipped"] == (
                "m.csv:3: field text is 200,000 characters, past the 131,072 a field may hold")
        path.unlink() if good is None else path.write_bytes(good)


def test_an_export_scores_only_shards_naming_its_labels(text_export, tmp_path):
    """Two manifest corpora may share a dataset name and not a label set: scoring one's model on the other's
    shards would read every label id as another class."""
    import shutil

    from m2fdist.inference.evaluate import evaluate_export

    mine = [f"mood{i}" for i in range(len(LABELS["meld"]))]
    model = tmp_path / "model"
    shutil.copytree(text_export, model)
    meta = json.loads((model / CONFIG).read_text())
    meta["run"].update(dataset="manifest", labels=mine)
    meta["labels"] = mine
    (model / CONFIG).write_text(json.dumps(meta))
    shards = tmp_path / "shards"
    shards.mkdir()
    index = {"format": 1, "kind": "utterances", "dataset": "manifest", "label_names": mine[::-1],
             "splits": {"dev": {"shards": [], "samples": 0, "dialogs": 0}}}
    (shards / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"names the labels \['mood6', .*; the model predicts \['mood0'"):
        evaluate_export(model, shards, "dev")


def _old_runs(text_export: Path, tmp_path: Path) -> Path:
    """A text-only runs folder as an older m2fdist left it: its export's config.json carries the training
    machine's run config as it was (paths, a signed shard URL, commands, the W&B account), and its report.json
    names the runs folder and its figures by absolute path."""
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(text_export, runs / "text" / "export")
    meta = json.loads((runs / "text" / "export" / CONFIG).read_text())
    meta["run"] = private_run(tmp_path, str(tmp_path / "roberta"))
    (runs / "text" / "export" / CONFIG).write_text(json.dumps(meta))
    report = {"dataset": "meld", "modalities": "text only", "scored": f"the exported model {runs}/text/export",
              "checkpoint": {"tag": "step00000004", "step": 4, "chosen_by": "best checkpoint on dev",
                             "best_dev_weighted_f1": 0.5, "last_step": 4, "last_metrics": {}},
              "splits": {"test": {"accuracy": 0.625, "weighted_f1": 0.5, "macro_f1": 0.4, "count": 8,
                                  "per_class_f1": {"joy": 0.75}, "confusion_png": str(runs / "confusion_test.png")}},
              "ablation": [], "figures": {}}
    (runs / "report.json").write_text(json.dumps(report))
    return runs


def _texts(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in folder.rglob("*")
            if p.is_file() and p.suffix != ".safetensors"}


def test_a_bundle_of_an_older_export_leaves_out_its_private_settings(text_export, tmp_path):
    """write_bundle copied an older export's config.json as it was: s3_command, the signed shard URL and the
    training machine's paths went into RUNS/model, and from there to colleagues and the Hub."""
    from m2fdist.format.lineage import export_id
    from m2fdist.results.bundle import write_bundle

    runs = _old_runs(text_export, tmp_path)
    assert leaks((runs / "text" / "export" / CONFIG).read_text(), tmp_path)
    bundle = write_bundle(runs)
    texts = _texts(bundle)
    assert {"config.json", "README.md", "report.json", "text/config.json"} <= set(texts)
    assert {name: found for name, text in texts.items() if (found := leaks(text, tmp_path))} == {}
    assert json.loads(texts["text/config.json"]) == read_meta(runs / "text" / "export")  # public_meta's, no other
    assert "| test | 62.50 | 50.00 |" in texts["README.md"]  # the report's scores, kept for the card
    config = json.loads(texts["config.json"])
    assert config["made_from"] == {"text": export_id(runs / "text" / "export")}
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", config["made_from"]["text"])


def test_publishing_writes_the_card_anew_never_as_found(text_export, tmp_path):
    """An older card (it printed the shards location and the runs path) was re-uploaded as it was: M2FNet kept
    the README.md it loaded and save_pretrained / push_to_hub wrote it back. push_to_hub uploads the folder
    save_pretrained writes (huggingface_hub's ModelHubMixin), so that folder is what is checked here."""
    from m2fdist import M2FNet
    from m2fdist.results.bundle import write_bundle

    runs = _old_runs(text_export, tmp_path)
    bundle = write_bundle(runs)
    fresh = (bundle / "README.md").read_text()
    old = fresh.replace("## Data", f"## Data\n\nShards: `s3://bucket/meld?{SECRET}`; runs in {runs}.")
    (bundle / "README.md").write_text(old)
    model = M2FNet.from_pretrained(bundle)
    assert model.card == old  # as found, to read
    model.save_pretrained(tmp_path / "shared")
    texts = _texts(tmp_path / "shared")
    assert {name: found for name, text in texts.items() if (found := leaks(text, tmp_path))} == {}
    assert texts["README.md"] == fresh == str(model.generate_model_card())  # the scores survive: report.json
    assert json.loads(texts["report.json"]) == json.loads((bundle / "report.json").read_text())
    # the saved weights' own identity, recorded again for what they are now
    from m2fdist.format.lineage import file_sha256

    saved = json.loads(texts["config.json"])["made_from"]["text"]
    assert saved == f"sha256:{file_sha256(tmp_path / 'shared' / 'text' / WEIGHTS)}"
    assert json.loads(texts["text/config.json"])["weights_sha256"] == saved.removeprefix("sha256:")


_opened: list[str] | None = None


def _record_opens(event: str, args: tuple) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], str | Path):
        _opened.append(str(args[0]))


def test_loading_a_bundle_reads_each_config_once(text_export, tmp_path):
    """The bundle's config.json was read three times per load (huggingface_hub's mixin, a check before it, the
    parts' check) and each part's twice or three times: now once each, passed on."""
    import sys

    from m2fdist import M2FNet
    from m2fdist.results.bundle import write_bundle

    global _opened
    bundle = write_bundle(_old_runs(text_export, tmp_path))
    sys.addaudithook(_record_opens)  # the interpreter's own record of every open(), no stand-in
    _opened = []
    try:
        M2FNet.from_pretrained(bundle)
        opened = list(_opened)
    finally:
        _opened = None
    assert opened.count(str(bundle / CONFIG)) == 1, opened
    assert opened.count(str(bundle / "text" / CONFIG)) == 1, opened
