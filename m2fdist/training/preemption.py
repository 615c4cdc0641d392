"""Preemption that loses nothing: a stop signal saves the step it arrives at, and the run exits to be resumed.

A cluster ends jobs with a signal and, a little later, SIGKILL: SLURM sends SIGTERM at ``scancel``, at the time
limit and on preemption (``--signal=USR1@120`` asks for SIGUSR1 a while before), the deepspeed launcher passes
SIGTERM on to its ranks and kills them 30 s later, a supervisor stops the ``deepspeed`` runner alone. Before
this, the ranks died at once and resume went back to the last periodic save (with ``save_every=0``, a whole
epoch).

Now every rank catches the configured signals (``train.stop_signals``) and only raises a flag; the trainer
agrees on the flag across ranks at the next optimizer step, in the all-reduce it already makes there (so no
rank is left waiting in a collective, as NeMo does), saves that step's checkpoint (atomic, ``latest`` moved;
a second signal during the save only sets the flag again), and exits with :data:`EXIT_PREEMPTED`. Under SLURM,
rank 0 first requeues the job (``train.requeue``), and the requeued job's ``resume=auto`` continues exactly.

Processes that would outlive their run are stopped too: a rank started by the deepspeed launcher asks the
kernel for SIGTERM when the launcher dies (``PR_SET_PDEATHSIG``), and watches the runner above the launcher
(a pidfd, woken as it exits): a SIGTERM to the runner alone (``Popen.terminate()``, a W&B agent) leaves the
launcher and ranks training on, re-parented to PID 1, so a rank that sees the runner gone stops as if signalled.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

# The exit code of a run that stopped on a signal after saving (EX_TEMPFAIL: "try again later").
EXIT_PREEMPTED = 75
_PR_SET_PDEATHSIG = 1


class StopRequest:
    """A flag the signal handlers and the runner watch set; the trainer reads it at each step boundary."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._lock = threading.Lock()

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def request(self, reason: str) -> None:
        """Ask the run to stop at its next step (the first reason is kept); says so once, on stderr."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
        rank = os.environ.get("RANK", "0")
        # os.write, not print: a signal handler may run while print holds the stream's lock
        os.write(2, f"rank {rank}: {reason}: saving a checkpoint at the next step, then stopping\n".encode())

    def install(self, names: list[str]) -> None:
        """Catch these signals from now on: each only sets the flag."""
        for name in names:
            signal.signal(getattr(signal, name), self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.request(f"{signal.Signals(signum).name} received")

    def watch_launcher(self, interval: float = 1.0) -> bool:
        """Under the deepspeed launcher: SIGTERM to this rank when the launcher dies, and a watch on the runner
        above it. Returns whether a launcher was found."""
        launcher = os.getppid()
        if "deepspeed.launcher.launch" not in _cmdline(launcher):
            return False
        try:  # here the kernel does it: nothing polls, and it fires however the launcher dies
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass
        if os.getppid() != launcher:  # it died before the kernel was asked
            self.request("the deepspeed launcher is gone")
        runner = _parent_of(launcher)
        if runner is None or "deepspeed" not in _cmdline(runner):
            return True  # a launcher started by pdsh or by hand: the kernel's SIGTERM covers it

        watch = _waiter(runner, launcher, interval)
        if watch is None:  # the runner went between the two reads
            self.request(f"the deepspeed runner (pid {runner}) is gone")
            return True

        def stop_when_gone() -> None:
            watch()
            self.request(f"the deepspeed runner (pid {runner}) is gone")

        threading.Thread(target=stop_when_gone, name="m2fdist-runner-watch", daemon=True).start()
        return True


def _waiter(runner: int, launcher: int, interval: float) -> Callable[[], None] | None:
    """A function that returns once ``runner`` is gone, or None if it is gone already.

    A pidfd (Linux 5.3+) turns readable the moment the process exits, so a rank stops at the very next step (a
    fast run polled once a second trained on for many steps after its runner died); the launcher's parent is
    read again after opening it, so the fd names the runner and not a process that took its pid. Without
    pidfds, the launcher's parent is polled every ``interval`` seconds.
    """
    try:
        fd = os.pidfd_open(runner)
    except (AttributeError, OSError):
        fd = None
    if _parent_of(launcher) != runner:
        if fd is not None:
            os.close(fd)
        return None
    if fd is not None:
        def wait_fd() -> None:
            select.select([fd], [], [])
            os.close(fd)
        return wait_fd

    def poll() -> None:
        while _parent_of(launcher) == runner:
            time.sleep(interval)
    return poll


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _parent_of(pid: int) -> int | None:
    """``pid``'s parent from /proc (None once ``pid`` is gone): the launcher's parent becomes 1 (or a
    subreaper) when the runner dies."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def requeue(mode: str) -> str | None:
    """Under SLURM with ``train.requeue=auto``: put this job back in the queue (``scontrol requeue``, as
    Lightning's SLURM connector does). Returns what was done, for the log; None outside SLURM or with ``never``."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") and (
        f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}")
    job = job or os.environ.get("SLURM_JOB_ID")
    if mode == "never" or not job:
        return None
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"scontrol requeue {job} failed: {e}"
    if done.returncode != 0:
        return f"scontrol requeue {job} failed: {(done.stderr or done.stdout).strip()[:300]}"
    return f"requeued SLURM job {job}"
