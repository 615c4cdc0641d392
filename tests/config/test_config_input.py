"""A config file or a saved run config that is not what it should be is one line naming it, before any launch:
YAML that does not parse or asks for a Python object, a saved config of the wrong shape, splits the shards do
not hold, and training on the held-out test split."""

from __future__ import annotations

import json

import pytest
from test_config import utterance_index

from m2fdist.cli import main as cli
from m2fdist.config.errors import ConfigError
from m2fdist.config.load import from_dict, load_config, read_config, run_config

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("text, message", [
    ("stage: text\nx: !!python/object:os.system\n  a: 1\n",
     r", line 2: the YAML tag !!python/object:os.system is refused: a config is plain data"),
    ("stage: text\nx: !!python/object/apply:os.system [id]\n", r"line 2: the YAML tag !!python/object/apply:os.system"),
    ("stage: [\n", r", line 2: not valid YAML \(did not find expected node content\)"),
    ("a: " + "[" * 20000 + "]" * 20000, r"not valid YAML \(exceeded maximum nesting depth\)"),
    (b"stage: text\ndata:\n  shards: \xff\xfe\n", r": not UTF-8 text, so not a YAML config"),
])
def test_yaml_that_is_not_plain_data_is_one_config_error(tmp_path, capsys, text, message):
    """Each was a yaml traceback (the !!python tag refused, but as a ConstructorError from deep in OmegaConf)."""
    path = tmp_path / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=message):
        read_config(path)
    assert cli(["train", "--config", str(path), "--print-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"m2fdist train: config error: {path}") and "Traceback" not in err[0]


@pytest.mark.parametrize("raw, message", [
    ({"train": {"lr": "abc"}}, r"^X, key train.lr: Value 'abc' of type 'str' could not be converted to Float$"),
    ({"bogus": 1}, r"^X, key bogus: Key 'bogus' not in 'RunConfig'$"),
    ({"text": 5}, r"^X: Merge error: int is not a subclass of TextConfig"),
    ({"text": {"peft": [1]}}, r"^X: Cannot merge incompatible container types$"),  # was a TypeError traceback
    ({"text": {"pooling": "zzz"}}, r"^X: text.pooling must be one of"),
    ([1, 2], r"^X: a run config is a JSON object, not list$"),
])
def test_a_saved_config_of_the_wrong_shape_is_one_config_error(raw, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(raw, "X")


def test_a_run_folder_whose_config_is_not_json_says_which_file(tmp_path):
    (tmp_path / "config.json").write_text('{"stage": "text",')
    with pytest.raises(ValueError, match=r"config.json: not JSON \(Expecting property name"):
        run_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"train": {"epochs": "x"}}))
    with pytest.raises(ConfigError, match=r"config.json, key train.epochs: Value 'x'"):
        run_config(tmp_path)


def test_splits_are_checked_against_the_shards_before_launch(tmp_path, capsys):
    """A typo'd evaluation split was a KeyError on every rank after the first epoch's training."""
    shards = f"data.shards={utterance_index(tmp_path / 'shards')}"
    assert load_config("configs/tiny/text.yaml", [shards, "data.eval_splits=[dev]"]).data.eval_splits == ["dev"]
    with pytest.raises(ConfigError, match=r"^data.eval_splits: 'tset' is not a split of .*shards \(its index.json "
                                          r"has dev, test, train\)$"):
        load_config("configs/tiny/text.yaml", [shards, "data.eval_splits=[dev,tset]"])
    with pytest.raises(ConfigError, match=r"^data.train_split: 'trian' is not a split of"):
        load_config("configs/tiny/text.yaml", [shards, "data.train_split=trian"])
    assert cli(["train", "--config", "configs/tiny/text.yaml", shards, "data.eval_splits=[Dev]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config error: data.eval_splits: 'Dev' is not a split" in err[0]


def test_training_on_the_test_split_is_refused(tmp_path, capsys):
    """data.train_split=test trained on the split the report scores, silently."""
    shards = f"data.shards={utterance_index(tmp_path / 'shards')}"
    with pytest.raises(ConfigError, match=r"^data.train_split=test: the test split is held out"):
        load_config("configs/tiny/text.yaml", [shards, "data.train_split=test"])
    # refused from the values alone: --print-config says so too, without the shards
    assert cli(["train", "--config", "configs/tiny/text.yaml", "data.train_split=test", "--print-config"]) == 2
    assert "data.train_split=test: the test split is held out" in capsys.readouterr().err
    assert load_config("configs/tiny/text.yaml", [shards, "data.train_split=dev"]).data.train_split == "dev"
