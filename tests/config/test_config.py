"""Finding and checking config, in-process: --help lists every key, --print-config shows the resolved config,
values the data knows (feature widths, frame count) are read from it, and wrong paths fail before launch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import TINY_DIMS, write_features

from m2fdist.cli import main as cli
from m2fdist.common.labels import LABELS
from m2fdist.config.checks import check_model_paths
from m2fdist.config.errors import ConfigError
from m2fdist.config.help import describe
from m2fdist.config.load import load_config, load_extract_config
from m2fdist.config.schema import ExtractConfig, RunConfig
from m2fdist.pipeline import PipelineConfig

pytestmark = pytest.mark.unit


def help_of(capsys, command: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli([command, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command, config", [("train", RunConfig()), ("extract", ExtractConfig()),
                                             ("pipeline", PipelineConfig())])
def test_help_lists_every_key_with_its_default_and_description(capsys, command, config):
    text = help_of(capsys, command)
    keys = describe(config)
    assert len(keys) > 10
    undescribed = [k.name for k in keys if not k.help.strip()]
    assert not undescribed, f"config keys without a description (add a comment on the field): {undescribed}"
    for k in keys:
        assert f"\n  {k.name}: " in text, k.name
    if command == "train":  # nested sections appear by their dotted names, with defaults and descriptions
        assert "  fusion.dim_text: int = 0\n" in text and "features' index.json" in text
        assert "  train.lr: float = 0.0005\n      new layers" in text
        assert "--print-config" in text
    if command == "extract":
        assert "  data.num_frames: int = 0\n" in text and "  extract.chunk_utterances: int = 32\n" in text


def utterance_index(folder: Path, modalities: str = "text,audio,visual") -> Path:
    """An index.json of packed utterance shards (no shards needed for the config checks)."""
    folder.mkdir(parents=True, exist_ok=True)
    index = {"format": 1, "dataset": "meld", "label_names": list(LABELS["meld"]),
             "splits": {split: {"shards": []} for split in ("train", "dev", "test")},
             "options": {"modalities": modalities}}
    (folder / "index.json").write_text(json.dumps(index))
    return folder


def fake_export(folder: Path, stage: str, num_frames: int = 3) -> Path:
    """An export folder as config checks see it: weights file present, config.json with the run's config."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "config.json").write_text(json.dumps({"run": {"stage": stage, "data": {"num_frames": num_frames}}}))
    return folder


def test_print_config_shows_the_resolved_config_and_exits(tiny_features, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rc = cli(["train", "--config", "configs/tiny/fusion.yaml", f"data.shards={tiny_features}", "train.epochs=3",
              "--print-config"])
    assert rc == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["stage"] == "fusion" and printed["train"]["epochs"] == 3
    assert {k: printed["fusion"][f"dim_{k}"] for k in TINY_DIMS} == TINY_DIMS  # read from index.json
    assert "WORLD_SIZE" not in __import__("os").environ  # nothing was set up to launch
    # data that is not here does not stop the inspection: the config is printed, the failed check is a note
    assert cli(["train", "--config", "configs/tiny/fusion.yaml", "data.shards=/nowhere", "--print-config",
                "train.lr=0.123"]) == 0
    out, err = capsys.readouterr()
    assert yaml.safe_load(out)["train"]["lr"] == 0.123 and yaml.safe_load(out)["fusion"]["dim_text"] == 0
    assert "data.shards=/nowhere: no such folder" in err
    # the shipped configs print on a fresh checkout, where none of their shards exist
    assert cli(["train", "--config", "configs/meld/fusion.yaml", "--print-config", "train.lr=0.123"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["lr"] == 0.123
    # data at a URL is never fetched while inspecting
    assert cli(["train", "--config", "configs/tiny/fusion.yaml", "data.shards=http://127.0.0.1:1/x",
                "--print-config"]) == 0
    assert "is not read while inspecting" in capsys.readouterr().err
    # a value the config itself gets wrong is still an error, exit 2, one line
    assert cli(["train", "--config", "configs/tiny/fusion.yaml", "train.lr=0", "--print-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.lr must be > 0.0" in err[0]


def test_pipeline_print_config_packs_and_launches_nothing(tmp_path, capsys):
    runs = tmp_path / "runs"
    rc = cli(["pipeline", "--config", "configs/tiny/pipeline.yaml", f"runs={runs}", "seeds=[0,1]",
              "--print-config"])
    assert rc == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["runs"] == str(runs) and printed["seeds"] == [0, 1] and printed["modalities"]
    assert not runs.exists()  # nothing packed, built or launched


def test_fusion_dims_are_read_from_the_features_index(tiny_features, tmp_path):
    cfg = load_config("configs/tiny/fusion.yaml", [f"data.shards={tiny_features}"])
    assert (cfg.fusion.dim_text, cfg.fusion.dim_audio, cfg.fusion.dim_visual) == (32, 16, 32)
    assert load_config("configs/tiny/fusion.yaml", [f"data.shards={tiny_features}", "fusion.dim_audio=16"])
    with pytest.raises(ConfigError, match=r"fusion.dim_visual=600, but the visual features in .* are 32-d"):
        load_config("configs/tiny/fusion.yaml", [f"data.shards={tiny_features}", "fusion.dim_visual=600"])
    # text-only features: a text-only fusion row loads, one that needs audio says so
    text_only = write_features(tmp_path / "text_features", {"text": 24})
    cfg = load_config("configs/tiny/fusion.yaml", [f"data.shards={text_only}", "fusion.modalities=T",
                                                   "fusion.fusion=concat"])
    assert (cfg.fusion.dim_text, cfg.fusion.dim_audio) == (24, 0)
    with pytest.raises(ConfigError, match="fusion.modalities=TAV uses audio, but .* holds no audio features"):
        load_config("configs/tiny/fusion.yaml", [f"data.shards={text_only}"])
    # an index without recorded widths (written by another tool): explicit widths are trusted, unset ones refused
    bare = tmp_path / "bare"
    bare.mkdir()
    index = json.loads((tiny_features / "index.json").read_text())
    (bare / "index.json").write_text(json.dumps({k: v for k, v in index.items() if k != "dims"}))
    with pytest.raises(ConfigError, match="records no feature widths .*: set fusion.dim_text, fusion.dim_audio"):
        load_config("configs/tiny/fusion.yaml", [f"data.shards={bare}"])
    dims = ["fusion.dim_text=8", "fusion.dim_audio=8", "fusion.dim_visual=8"]
    assert load_config("configs/tiny/fusion.yaml", [f"data.shards={bare}", *dims]).fusion.dim_visual == 8
    # the fusion stage on utterance shards, or another stage on features, is refused
    with pytest.raises(ConfigError, match="holds utterance shards: the fusion stage reads"):
        load_config("configs/tiny/fusion.yaml", [f"data.shards={utterance_index(tmp_path / 'utt')}"])
    with pytest.raises(ConfigError, match="holds dialog features .* the text stage reads utterance shards"):
        load_config("configs/tiny/text.yaml", [f"data.shards={tiny_features}"])


def test_missing_local_paths_are_config_errors_before_launch(tmp_path, capsys):
    shards = f"data.shards={utterance_index(tmp_path / 'shards')}"

    def checked(config: str, *overrides: str) -> RunConfig:
        cfg = load_config(config, [shards, *overrides])
        check_model_paths(cfg)
        return cfg

    with pytest.raises(ConfigError, match=r"^text.model=\./no/such/roberta: no such local model folder"):
        checked("configs/tiny/text.yaml", "text.model=./no/such/roberta")
    with pytest.raises(ConfigError, match="text.model=/nowhere/roberta"):
        checked("configs/tiny/text.yaml", "text.model=/nowhere/roberta")
    # a hub name is not a local path (nothing is downloaded by the check)
    assert checked("configs/tiny/text.yaml", "text.model=FacebookAI/roberta-base")
    local = tmp_path / "roberta"
    local.mkdir()
    assert checked("configs/tiny/text.yaml", f"text.model={local}").text.model == str(local)
    with pytest.raises(ConfigError, match=r"^visual.face_init=/nowhere/face.safetensors: no such weights file"):
        checked("configs/tiny/visual.yaml", "visual.face_init=/nowhere/face.safetensors")
    # the entry point runs the check before anything starts: one line, exit 2
    assert cli(["train", "--config", "configs/tiny/text.yaml", shards, "text.model=./no/such/roberta"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["m2fdist train: config error: text.model=./no/such/roberta: no such local model folder (a hub "
                   "model is named org/name)"]
    with pytest.raises(ConfigError, match=r"^data.shards=/no/shards: no such folder"):
        load_config("configs/tiny/text.yaml", ["data.shards=/no/shards"])
    with pytest.raises(ConfigError, match=r"^data.shards=/no/shards: no such folder"):
        load_extract_config("configs/tiny/extract.yaml", ["data.shards=/no/shards"])


def extract_args(tmp_path: Path, **exports: Path) -> list[str]:
    shards = utterance_index(tmp_path / "shards")
    return [f"data.shards={shards}", f"extract.out={tmp_path / 'features'}",
            *(f"extract.{name}={exports.get(name) or repr('')}" for name in ("text", "audio", "visual"))]


def test_extraction_takes_its_frame_count_from_the_visual_export(tmp_path, capsys):
    visual = fake_export(tmp_path / "visual", "visual", num_frames=3)
    text = fake_export(tmp_path / "text", "text")
    args = extract_args(tmp_path, text=text, visual=visual)
    cfg = load_extract_config("configs/tiny/extract.yaml", args)
    assert isinstance(cfg, ExtractConfig) and cfg.data.num_frames == 3
    assert load_extract_config("configs/tiny/extract.yaml", [*args, "data.num_frames=3"]).data.num_frames == 3
    with pytest.raises(ConfigError, match=r"data.num_frames=4, but the visual export .* was trained on 3 frames"):
        load_extract_config("configs/tiny/extract.yaml", [*args, "data.num_frames=4"])
    # the entry point: --print-config shows it and exits 0; a config error exits 2 with one line
    assert cli(["extract", "--config", "configs/tiny/extract.yaml", *args, "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["num_frames"] == 3 and printed["extract"]["visual"] == str(visual)
    assert cli(["extract", "--config", "configs/tiny/extract.yaml", *args, "data.num_frames=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("m2fdist extract: config error: data.num_frames=4")


def test_extract_config_is_its_own_type(tmp_path):
    audio = fake_export(tmp_path / "audio", "audio")
    args = extract_args(tmp_path, audio=audio)
    with pytest.raises(ConfigError, match="extract.text=.*is an export of the audio stage"):
        load_extract_config("configs/tiny/extract.yaml", [*extract_args(tmp_path, text=audio)])
    with pytest.raises(ConfigError, match="extract.visual=/nowhere: no exported model there"):
        load_extract_config("configs/tiny/extract.yaml", [*args, "extract.visual=/nowhere"])
    with pytest.raises(ConfigError, match="give at least one exported model"):
        load_extract_config("configs/tiny/extract.yaml", extract_args(tmp_path))
    text_only = utterance_index(tmp_path / "text_shards", modalities="text")
    with pytest.raises(ConfigError, match="holds text-only samples: extract.audio needs shards packed with media"):
        load_extract_config("configs/tiny/extract.yaml", [*args, f"data.shards={text_only}"])
    # a training config given to extraction, and the other way round, say which command they are for
    with pytest.raises(ConfigError, match="is a fusion training config"):
        load_extract_config("configs/tiny/fusion.yaml", args)
    with pytest.raises(ConfigError, match="is an extraction config: run it with `m2fdist extract`"):
        load_config("configs/tiny/extract.yaml", args)
    with pytest.raises(ConfigError, match="train"):  # training keys are not extraction keys
        load_extract_config("configs/tiny/extract.yaml", [*args, "train.epochs=2"])
    # extract YAMLs written before ExtractConfig (with `stage: extract`) still load
    legacy = tmp_path / "legacy.yaml"
    legacy.write_text("stage: extract\noutput_dir: runs/x\n" + Path("configs/tiny/extract.yaml").read_text())
    assert load_extract_config(legacy, args).extract.audio == str(audio)


def test_configs_saved_before_extract_config_still_load_and_resume():
    """Run configs saved with the old ``extract`` section and fixed widths: exports load, resumes are not refused."""
    from m2fdist.config.load import from_dict
    from m2fdist.training.checkpoint import config_changes

    old = RunConfig().to_dict()
    old["extract"] = {"text": "", "audio": "", "visual": "", "out": "shards/meld_features",
                      "splits": ["train", "dev", "test"], "chunk_utterances": 32}
    old["fusion"].update(dim_text=1024, dim_audio=300, dim_visual=600)
    assert from_dict(old).fusion.dim_text == 1024
    harmless, breaking = config_changes(old, RunConfig().to_dict())
    assert not breaking and any(line.startswith("extract.out") for line in harmless)
