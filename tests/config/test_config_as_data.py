"""A config is data until a run starts: inspecting or checking one reads no network, runs no command and
resolves nothing from the environment."""

from __future__ import annotations

import http.server
import threading

import pytest
import yaml

from m2fdist.cli import main as cli
from m2fdist.config.errors import ConfigError
from m2fdist.config.load import read_config

pytestmark = pytest.mark.unit

SECRET = "hf_s3cr3t_t0ken"


@pytest.fixture
def server():
    """A local HTTP server that records every path asked of it (and serves nothing)."""
    asked: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            asked.append(self.path)
            self.send_error(404)

        def log_message(self, format, *args):  # noqa: A002 (the stdlib's name)
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", asked
    httpd.shutdown()
    httpd.server_close()


def test_environment_interpolation_is_refused_and_nothing_is_fetched(server, tmp_path, capsys, monkeypatch):
    url, asked = server
    monkeypatch.setenv("HF_TOKEN", SECRET)
    config = tmp_path / "text.yaml"
    config.write_text(f"stage: text\ndataset: meld\ndata:\n  shards: {url}/${{oc.env:HF_TOKEN}}/shards\n")
    for argv in (["train", "--config", str(config), "--print-config"], ["train", "--config", str(config)]):
        assert cli(argv) == 2
        out, err = capsys.readouterr()
        assert "data.shards" in err and "calls a resolver" in err, err
        assert SECRET not in out + err
    # the same through a command-line override, and inside a list or a nested value
    for override in ("data.shards=${oc.env:HF_TOKEN}", "text.model=x-${oc.env:HF_TOKEN}",
                     "text.lora.target_modules=[a,'${oc.env:HF_TOKEN}']"):
        with pytest.raises(ConfigError, match="calls a resolver") as e:
            read_config("configs/tiny/text.yaml", [override])
        assert SECRET not in str(e.value)
    assert asked == []


def test_plain_references_between_keys_still_work():
    cfg = read_config("configs/tiny/text.yaml", ["train.lr=0.004", "train.encoder_lr=${train.lr}"])
    assert cfg.train.encoder_lr == 0.004


def test_print_config_runs_no_command_and_reads_no_url(server, tmp_path, capsys):
    url, asked = server
    ran = tmp_path / "ran"
    for shards in ("s3://bucket/shards", f"{url}/shards"):
        assert cli(["train", "--config", "configs/tiny/fusion.yaml", f"data.shards={shards}",
                    f"data.s3_command=sh -c 'id > {ran}'", "--print-config"]) == 0
        out, err = capsys.readouterr()
        assert yaml.safe_load(out)["data"]["shards"] == shards and "is not read while inspecting" in err
    assert not ran.exists() and asked == []
