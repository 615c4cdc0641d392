"""The shared progress helper: bars on a terminal, whole lines in logs, nothing when asked or off rank 0."""

from __future__ import annotations

import io

import pytest

from m2fdist.common import progress

pytestmark = pytest.mark.unit


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def auto(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.delenv(progress.INTERVAL_ENV, raising=False)


def test_a_log_gets_whole_lines_not_carriage_returns(monkeypatch):
    out = io.StringIO()  # not a terminal, like a stage's .log or CI
    bar = progress.bar(50, "text", "step", initial=10, file=out)
    for _ in range(40):
        bar.update()
    bar.set_postfix_str("epoch 2, loss 0.5000")
    bar.close()
    assert "\r" not in out.getvalue()
    lines = out.getvalue().splitlines()
    # the default interval (10 s) is far longer than this loop: one line, when it closes, with the final count
    assert len(lines) == 1 and lines[0].startswith("[progress] text: 100%") and "50/50" in lines[0]
    assert lines[0].endswith("epoch 2, loss 0.5000]")
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")  # a line per update when the interval is 0
    out = io.StringIO()
    bar = progress.bar(None, "extract dev", "dialog", file=out)
    for _ in range(3):
        bar.update()
    bar.close()
    assert [ln.split(":")[0] for ln in out.getvalue().splitlines()] == ["[progress] extract dev"] * 4
    assert "3dialog" in out.getvalue().splitlines()[-1]


def test_a_terminal_gets_a_bar_and_off_means_silence(monkeypatch, capsys):
    term = Terminal()
    bar = progress.bar(5, "faces", "utt", file=term)
    assert progress.style(term) == "bar"
    bar.update(5)
    progress.say("text step 5/5 dev: accuracy 0.5000, weighted F1 0.4000", bar)
    bar.close()
    assert "\r" in term.getvalue() and "5/5" in term.getvalue()
    assert "[eval] text step 5/5 dev" in term.getvalue()  # printed above the bar, on the bar's stream
    assert progress.style(io.StringIO()) == "lines"
    before = term.getvalue()
    for off in ("off", "0", "quiet"):
        monkeypatch.setenv(progress.ENV, off)
        silent = progress.bar(5, "faces", "utt", file=term)
        silent.update(5)
        silent.close()
        progress.say("dev: accuracy 1")
    assert capsys.readouterr().err == "" and term.getvalue() == before
    monkeypatch.setenv(progress.ENV, "lines")  # forced lines on a terminal
    out = Terminal()
    bar = progress.bar(2, "packing", "utt", file=out)
    bar.update(2)
    bar.close()
    assert out.getvalue().startswith("[progress] packing: 100%") and "\r" not in out.getvalue()
    monkeypatch.delenv(progress.ENV)
    out = Terminal()
    other_rank = progress.bar(2, "packing", "utt", enabled=False, file=out)  # rank != 0, --no-progress
    other_rank.update(2)
    other_rank.close()
    assert out.getvalue() == ""
