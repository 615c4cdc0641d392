"""One run per output folder: a launch claims its ``output_dir`` before its process group starts.

Two launches 20 s apart into one folder were both accepted (neither had written anything yet when the other
looked), and then mixed their metrics, configs and checkpoints. Rank 0 of a launch now holds an exclusive
``flock`` on ``output_dir/.m2fdist-run.lock`` for as long as it lives and writes who holds it (the launch's
rendezvous address, host, pid, start); the lock goes with the process, however it ends, so a killed run never
leaves a stale claim. Every other rank finds the lock held and accepts it only when the holder is its own
launch (the same ``MASTER_ADDR:MASTER_PORT``). ``flock`` holds across the processes of one machine and, on
NFSv4 and most cluster file systems, across nodes.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO

LOCK = ".m2fdist-run.lock"

_held: dict[Path, tuple[IO[str], str]] = {}  # this process's claims (file, launch), kept open until it exits


def launch_id() -> str:
    """What every rank of one launch shares and no other live launch does: its rendezvous address."""
    return f"{os.environ.get('MASTER_ADDR', '127.0.0.1')}:{os.environ.get('MASTER_PORT', '')}"


def _holder(f: IO[str]) -> dict:
    f.seek(0)
    try:
        return json.loads(f.read() or "{}")
    except ValueError:
        return {}


def claim(output_dir: str | Path, rank: int | None = None, wait: float = 30.0) -> None:
    """Claim ``output_dir`` for this launch, or raise ValueError naming the live run that holds it.

    Rank 0 takes the lock. The other ranks never take it while their rank 0 may be claiming (a probe lock of
    theirs, however short, would make rank 0 find the folder taken): they wait up to ``wait`` seconds for the
    holder's record to name their own launch, and only then look whether anyone holds the lock at all.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = (out / LOCK).resolve()
    if path in _held and _held[path][1] == launch_id():
        return
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    if rank != 0:
        _follow(out, path, wait)
        return
    f = path.open("a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(f)
        f.close()
        raise _in_use(out, holder) from None
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"launch": launch_id(), "host": socket.gethostname(), "pid": os.getpid(),
                        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    f.flush()
    _held[path] = (f, launch_id())


def _follow(out: Path, path: Path, wait: float) -> None:
    """A rank other than 0: accept once the lock's record names this launch (its rank 0 claimed the folder);
    after ``wait`` seconds, refuse if another run holds the lock, else leave the decision to rank 0."""
    deadline = time.monotonic() + wait
    with path.open("a+") as f:
        while True:
            holder = _holder(f)
            if holder.get("launch") == launch_id():
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(out, _holder(f)) from None
        fcntl.flock(f, fcntl.LOCK_UN)  # nobody holds it: this launch's rank 0 has not claimed it (it decides)


def _in_use(out: Path, holder: dict) -> ValueError:
    return ValueError(f"output_dir={out} is in use by another run (launch {holder.get('launch', '?')}, pid "
                      f"{holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')}): "
                      "wait for it to end, or give this run another output_dir")


def release(output_dir: str | Path) -> None:
    """Give up this process's claim (tests; a process's claims also end with it)."""
    f, _ = _held.pop((Path(output_dir) / LOCK).resolve(), (None, None))
    if f is not None:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def check_same_folder(output_dir: str | Path) -> None:
    """Once the process group is up: every rank of the launch trains into the folder rank 0 claimed.

    Each rank resolves ``output_dir`` itself (a sweep trial's folder comes from its ``WANDB_*`` environment,
    :mod:`m2fdist.config.trial`), and DeepSpeed's ssh/pdsh launcher passes no ``WANDB_*`` variable to the other
    nodes: their ranks would write their checkpoint shards into another folder. Every rank sees every rank's
    folder (one all-gather), so all of them stop together instead of some waiting in a collective.
    """
    import torch.distributed as dist  # here, not at the top: the claim runs before torch is needed

    folders: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(folders, str(output_dir))
    odd = {r: f for r, f in enumerate(folders) if f != folders[0]}
    if odd:
        raise ValueError(f"the ranks of this launch disagree on output_dir: rank 0 has {folders[0]}, "
                         + ", ".join(f"rank {r} {f}" for r, f in sorted(odd.items()))
                         + " (a sweep trial's WANDB_SWEEP_ID / WANDB_RUN_ID must reach every node)")
