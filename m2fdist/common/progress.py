"""Progress on the console, one helper for every long step (pack, faces, extract, training).

On a terminal it is a tqdm bar. When stderr is not a terminal (a stage's ``.log``, CI, ``m2fdist pipeline``
reading a stage's output) a bar's carriage returns would make the log unreadable, so it prints a plain line
instead: every ``M2FDIST_PROGRESS_INTERVAL`` seconds (10 by default) and when it closes. Plain lines start
with ``[progress]``, evaluation lines with ``[eval]``; ``m2fdist pipeline`` shows those lines of each stage
on the console.

``M2FDIST_PROGRESS=off`` silences all of it (``bar`` or ``lines`` forces a style); only rank 0 reports, so a
distributed job shows one bar, not one per process.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

ENV = "M2FDIST_PROGRESS"  # auto (default) | bar | lines | off
INTERVAL_ENV = "M2FDIST_PROGRESS_INTERVAL"  # seconds between plain lines
TAGS = ("[progress] ", "[eval] ")  # what `m2fdist pipeline` shows of a stage's output


def style(stream: TextIO | None = None) -> str:
    """'bar', 'lines' or 'off': the environment's choice, else a bar on a terminal and lines elsewhere."""
    wanted = os.environ.get(ENV, "auto").strip().lower()
    if wanted in ("off", "0", "no", "false", "quiet"):
        return "off"
    if wanted in ("bar", "lines"):
        return wanted
    stream = stream or sys.stderr
    return "bar" if hasattr(stream, "isatty") and stream.isatty() else "lines"


class Lines:
    """tqdm's counting and formatting, written as whole lines at most every ``interval`` seconds."""
    def __init__(self, total: int | None, desc: str, unit: str, initial: int, interval: float, file: TextIO):
        self.total, self.desc, self.unit, self.n, self.interval, self.file = total, desc, unit, initial, interval, file
        self.start = self.last = time.monotonic()
        self.initial = initial
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self._print(now)

    def set_postfix_str(self, text: str, refresh: bool = False) -> None:
        self.postfix = text

    def write(self, line: str) -> None:
        print(line, file=self.file, flush=True)

    def _print(self, now: float) -> None:
        self.last = now
        elapsed = now - self.start
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else None
        meter = tqdm.format_meter(self.n, self.total, elapsed, prefix=self.desc, unit=self.unit, rate=rate,
                                  postfix=self.postfix or None, ncols=0, initial=self.initial)
        self.write(TAGS[0] + meter.strip())

    def close(self) -> None:
        self._print(time.monotonic())


class Off:
    """What a silenced bar (another rank, ``M2FDIST_PROGRESS=off``, ``--no-progress``) does: nothing."""
    n = 0

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str, refresh: bool = False) -> None:
        pass

    def write(self, line: str) -> None:
        pass

    def close(self) -> None:
        pass


def bar(total: int | None, desc: str, unit: str = "it", *, enabled: bool = True, initial: int = 0,
        file: TextIO | None = None) -> Any:
    """A progress bar (tqdm), plain periodic lines, or nothing, with tqdm's update / set_postfix_str / write /
    close. ``enabled=False`` is for the callers' own switches: other ranks, ``--no-progress``."""
    file = file or sys.stderr
    how = style(file) if enabled else "off"
    if how == "off":
        return Off()
    if how == "bar" and _rows(file) == 0 and os.environ.get(ENV, "auto") == "auto":
        how = "lines"  # a pseudo-terminal of unknown size (0 rows): tqdm would draw nothing there
    if how == "lines":
        return Lines(total, desc, unit, initial, float(os.environ.get(INTERVAL_ENV, 10)), file)
    return _Bar(total=total, desc=desc, unit=unit, initial=initial, file=file, dynamic_ncols=True)


def _rows(file: TextIO) -> int | None:
    try:
        return os.get_terminal_size(file.fileno()).lines
    except (OSError, AttributeError, ValueError):  # not a real terminal (a test's stand-in): no size to go by
        return None


class _Bar(tqdm):
    """A tqdm bar whose ``write`` prints a whole line above it (e.g. an evaluation's scores)."""
    def write(self, line: str) -> None:  # type: ignore[override]
        tqdm.write(line, file=self.fp)


def say(line: str, progress: Any = None) -> None:
    """An evaluation's line, printed above the bar when there is one (silenced only by M2FDIST_PROGRESS=off)."""
    line = TAGS[1] + line
    if style() == "off":
        return
    if isinstance(progress, _Bar):
        progress.write(line)
    else:
        print(line, file=sys.stderr, flush=True)
