"""The ``m2fdist`` command's shared rules: one argument type for shards locations (URLs included), one error
policy (wrong input: one line, exit 2; started work that failed: its traceback, exit 1), help without torch."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from launching import ENV, ROOT

from m2fdist.cli import COMMANDS, build_parser, main, run_command
from m2fdist.common.errors import RunFailed

pytestmark = pytest.mark.unit


def test_commands_that_read_shards_take_urls_as_data_shards_does(meld_shards, http_shards, tmp_path, capsys):
    shards = str(meld_shards[0])
    assert main(["summary", shards]) == 0
    local = capsys.readouterr().out
    assert main(["summary", http_shards]) == 0  # a Path folded http:// into http:/ before
    assert capsys.readouterr().out == local
    assert main(["peek", shards, "--split", "dev"]) == 0
    local = capsys.readouterr().out
    assert main(["peek", http_shards, "--split", "dev"]) == 0
    assert capsys.readouterr().out == local and "dialog batch" in local
    assert main(["tiny-text", "--shards", http_shards, "--out", str(tmp_path / "tiny")]) == 0
    assert (tmp_path / "tiny" / "config.json").is_file()
    # a location that is a command is refused by the argument type itself: argparse's usage error, exit 2
    for bad in ("pipe:cat /etc/passwd", "ftp://example.org/shards"):
        for command in (["summary", bad], ["peek", bad], ["eval", "--model", "m", "--shards", bad],
                        ["faces", bad], ["tiny-text", "--shards", bad, "--out", str(tmp_path / "x")]):
            with pytest.raises(SystemExit) as exit_:
                main(command)
            assert exit_.value.code == 2
            assert "never a command" in capsys.readouterr().err


def test_every_command_has_one_error_policy(tmp_path, capsys):
    assert main(["summary", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("m2fdist summary: error: ")
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("m2fdist report: error: ")
    assert main(["pipeline", "--config", str(tmp_path / "none.yaml")]) == 2  # was 1, unlike every other command
    assert capsys.readouterr().err.startswith("m2fdist pipeline: config error: ")

    def fails(args: argparse.Namespace) -> int:
        try:
            raise ZeroDivisionError("deep inside")
        except ZeroDivisionError as e:
            raise RunFailed("the stage's launch failed; log: x.log") from e

    assert run_command("train", fails, argparse.Namespace()) == 1
    err = capsys.readouterr().err
    assert err.startswith("m2fdist train: failed: the stage's launch failed; log: x.log")
    assert "ZeroDivisionError: deep inside" in err and "Traceback" in err


def test_full_parser_names_every_command_and_help_needs_no_torch():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(COMMANDS)
    for name, p in sub.choices.items():
        assert p.format_help().startswith(f"usage: m2fdist {name}")
    code = "import sys; from m2fdist.cli import main; main(['--help'])"
    proc = subprocess.run([sys.executable, "-c", code + "\n"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0 and "pipeline" in proc.stdout
    probe = ("import sys\ntry:\n    from m2fdist.cli import main; main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert proc.stdout.strip().splitlines()[-1] == "False", proc.stdout
