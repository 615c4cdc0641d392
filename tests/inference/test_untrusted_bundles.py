"""Bundles and exports from elsewhere: loading one never runs its code, never builds a model its weights file
cannot back, and never mixes parts of two runs."""

from __future__ import annotations

import io
import json
import resource
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from m2fdist.api import M2FNet
from m2fdist.cli import main as cli
from m2fdist.common.labels import LABELS
from m2fdist.config.load import read_config
from m2fdist.format.exports import resolve_model, weights_header
from m2fdist.inference.load import check_against, load_exported
from m2fdist.models.build import build_model
from m2fdist.models.pretrained import load_config, load_tokenizer
from m2fdist.models.text import TextModel
from m2fdist.models.tiny_text import build_tiny_roberta
from m2fdist.results.bundle import write_bundle

pytestmark = pytest.mark.unit

TEXTS = ["I am so happy today", "why would you do that", "fine", "this is terrible news", "oh really?"] * 4
# What a model folder's own code would do if it ran: leave this file behind.
EVIL = "import pathlib\npathlib.Path(__file__).with_name('RAN').write_text('code from the bundle ran')\n"


def _export(folder: Path, stage: str, model: nn.Module, cfg) -> Path:
    folder.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    meta = {"run": cfg.to_dict(), "tag": "t", "stage": stage, "labels": list(LABELS["meld"])}
    (folder / "config.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """RUNS/{text,fusion}/export of tiny models built here, as a pipeline leaves them."""
    base = tmp_path_factory.mktemp("runs")
    roberta = build_tiny_roberta(base / "roberta", TEXTS, vocab_size=300, hidden_size=32, num_layers=1)
    cfg = read_config("configs/tiny/text.yaml", [f"text.model={roberta}"])
    text = _export(base / "text" / "export", "text",
                   TextModel.from_pretrained(cfg.text, labels=LABELS["meld"]), cfg)
    load_config(roberta).save_pretrained(text / "text_encoder")
    load_tokenizer(roberta).save_pretrained(text / "text_encoder")
    fcfg = read_config("configs/tiny/fusion.yaml",
                       ["fusion.modalities=T", "fusion.fusion=concat", "fusion.dim_text=32"])
    _export(base / "fusion" / "export", "fusion", build_model("fusion", fcfg, 7), fcfg)
    return base


@pytest.fixture
def bundle(runs, tmp_path) -> Path:
    """A text-only bundle (text/ and the bundle's config.json), fresh for each test to tamper with."""
    out = tmp_path / "model"
    out.mkdir()
    shutil.copytree(runs / "text" / "export", out / "text")
    (out / "config.json").write_text(json.dumps({"format": "m2fdist-bundle", "dataset": "meld",
                                                 "labels": list(LABELS["meld"]), "parts": ["text"]}))
    return out


def _edit(file: Path, **changes) -> None:
    data = json.loads(file.read_text())
    data.update(changes)
    file.write_text(json.dumps(data))


def _loads(bundle: Path, capsys, monkeypatch) -> list[str]:
    """Load ``bundle`` the three ways a user does (API, predict, eval) with a "y" waiting on standard input,
    so a prompt to run the bundle's code would be answered yes; return the three errors."""
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n" * 10))
    errors = []
    with pytest.raises(ValueError) as e:
        M2FNet.from_pretrained(bundle)
    errors.append(str(e.value))
    manifest = bundle.parent / "m.csv"
    manifest.write_text("dialog,utt,speaker,text\nd,0,A,hello there\n")
    for argv in (["predict", "--model", str(bundle), "--manifest", str(manifest)],
                 ["eval", "--model", str(bundle), "--shards", str(bundle.parent / "no-shards")]):
        assert cli(argv) == 2
        errors.append(capsys.readouterr().err.strip())
    assert not list(bundle.rglob("RAN")), "code from the bundle ran"
    return errors


def test_a_clean_bundle_loads_with_the_exported_weights(bundle):
    model = M2FNet.from_pretrained(bundle)
    text = model.exports["text"][1]
    saved = load_file(str(bundle / "text" / "model.safetensors"))
    assert text.state_dict().keys() == saved.keys()
    assert all(torch.equal(v, saved[k]) for k, v in text.state_dict().items())
    assert list(model.exports) == ["text"]
    assert model.predict([[{"text": "I am so happy today"}]])[0][0]["emotion"] in LABELS["meld"]


@pytest.mark.parametrize("where, auto_map, model_type", [
    ("config.json", {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}, "evil-net"),  # unknown type
    ("config.json", {"AutoModel": "evil.EvilModel"}, None),  # a family transformers knows, code beside it anyway
    ("config.json", {"AutoModel": "someone/elsewhere--evil.EvilModel"}, None),  # code in another Hub repository
    ("tokenizer_config.json", {"AutoTokenizer": ["evil.EvilTokenizer", None]}, None),
])
def test_a_bundle_naming_its_own_code_is_refused_and_nothing_runs(bundle, capsys, monkeypatch, where, auto_map,
                                                                 model_type):
    enc = bundle / "text" / "text_encoder"
    (enc / "evil.py").write_text(EVIL)
    _edit(enc / where, auto_map=auto_map, **({"model_type": model_type} if model_type else {}))
    for error in _loads(bundle, capsys, monkeypatch):
        assert "names custom code" in error and "never runs code" in error and where in error, error


def test_an_encoder_config_claiming_a_huge_model_is_refused_before_allocating(bundle, capsys, monkeypatch):
    # 64 layers of width 16384 (~200B parameters, 800 GB in fp32) claimed beside a 100 KB weights file
    _edit(bundle / "text" / "text_encoder" / "config.json", hidden_size=16384, num_hidden_layers=64,
          intermediate_size=65536, num_attention_heads=128)
    before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.monotonic()
    for error in _loads(bundle, capsys, monkeypatch):
        assert "weights do not match the model its config describes" in error or "in the file" in error, error
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 500 and time.monotonic() - start < 60, (grown_mb, time.monotonic() - start)


def test_a_fusion_config_claiming_other_shapes_is_refused(runs, tmp_path):
    export = tmp_path / "fusion"
    shutil.copytree(runs / "fusion" / "export", export)
    meta = json.loads((export / "config.json").read_text())
    meta["run"]["fusion"]["dim_text"] = 1 << 20
    (export / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="in the file"):
        load_exported(export)


def test_buffers_the_file_cannot_back_are_refused(tmp_path):
    """A module whose config asks for a huge non-persistent buffer (position tables, rotary caches)."""
    class Big(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Linear(4, 4)
            self.register_buffer("table", torch.empty(1 << 30), persistent=False)

    file = tmp_path / "model.safetensors"
    save_file({f"w.{k}": v.contiguous() for k, v in nn.Linear(4, 4).state_dict().items()}, str(file))
    with torch.device("meta"):
        big = Big()
    with pytest.raises(ValueError, match="more than its .* weights file can fill"):
        check_against(big, weights_header(file), file)


def test_a_malformed_weights_file_is_a_clear_error(bundle, capsys, monkeypatch):
    (bundle / "text" / "model.safetensors").write_bytes(b"\xff" * 8 + b"{not json")
    for error in _loads(bundle, capsys, monkeypatch):
        assert "not a well-formed safetensors file" in error, error


def test_only_the_parts_the_bundle_names_are_read(bundle, runs):
    """A text-only bundle beside an earlier run's fusion/ (copied in by hand, or left by an old writer)."""
    shutil.copytree(runs / "fusion" / "export", bundle / "fusion")
    assert list(M2FNet.from_pretrained(bundle).exports) == ["text"]
    assert resolve_model(bundle) == bundle / "text"
    _edit(bundle / "config.json", parts=["text", "fusion", "audio"])
    with pytest.raises(FileNotFoundError, match="names audio, but there is no audio/model.safetensors"):
        M2FNet.from_pretrained(bundle)
    _edit(bundle / "config.json", parts=["text", "../elsewhere"])
    with pytest.raises(ValueError, match="not a bundle's config"):
        M2FNet.from_pretrained(bundle)
    (bundle / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        M2FNet.from_pretrained(bundle)


def test_writing_a_bundle_replaces_an_earlier_one_whole(runs, tmp_path):
    text_only = tmp_path / "runs"
    shutil.copytree(runs / "text", text_only / "text")
    out = tmp_path / "model"
    for part in ("audio", "visual", "fusion"):  # an earlier multimodal bundle in the same folder
        (out / part).mkdir(parents=True)
        (out / part / "model.safetensors").write_bytes(b"old")
    write_bundle(text_only, out)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "text"]
    assert json.loads((out / "config.json").read_text())["parts"] == ["text"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left beside it


@pytest.mark.parametrize("stage", ["audio", "visual"])
def test_every_stage_is_checked_on_the_meta_device_and_loads(stage, tmp_path):
    """The extractors build on the meta device too (the mel filters are computed on the CPU inside it), so the
    check runs before any export is built for real, and a clean export loads with its own weights."""
    cfg = read_config(f"configs/tiny/{stage}.yaml")
    export = _export(tmp_path / stage, stage, build_model(stage, cfg, 7), cfg)
    _, model = load_exported(export)
    saved = load_file(str(export / "model.safetensors"))
    assert model.state_dict().keys() == saved.keys()
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
