"""What every m2fdist process needs around its work: process set-up, teardown and upstream workarounds.

``train``, ``extract``, the pipeline and the tests use these and nothing else to start and end a process:

- :func:`single_process_env`: ``m2fdist train`` without a launcher describes a world of one, as a launcher would;
- :func:`share_cores`: each rank takes its share of the node's cores (the deepspeed launcher sets no
  OMP_NUM_THREADS, and 2 ranks on 2 cores ran 4 spinning threads);
- :func:`own_ninja`: DeepSpeed's JIT ops are built with the ninja installed beside this Python, whatever PATH
  says (two ninja versions rebuilt the CPU comm op at every launch);
- :func:`own_extensions`: and into this environment's own folder (two environments rebuilt each other's ops);
- :func:`started`: the process group, with the stale JIT-lock watcher (:mod:`.jit_lock`) around its start and
  the orphaned /dev/shm buffers of DeepSpeed's CPU allreduce (:mod:`.shm_buffers`) cleared first;
- :func:`shutdown`: leave the group together, release this rank's shm buffer, exit without C++ teardown;
- :func:`run_in_group`: a rank's work between the two, its failure a RunFailed naming the rank;
- :func:`free_port`: the one free-port helper;
- :func:`return_freed_memory`, :func:`trim_freed_memory`: freed buffers go back to the OS (glibc's malloc kept
  them);
- :func:`init_distributed` gives DeepSpeed gloo all-gathers that hold what they gather once (:mod:`.gloo_gather`).

Each workaround says which upstream version it works around.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

from m2fdist.common.errors import RunFailed
from m2fdist.runtime import shm_buffers
from m2fdist.runtime.gloo_gather import gather_in_place
from m2fdist.runtime.jit_lock import stale_lock_watch


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for MASTER_PORT / --master_port)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def single_process_env() -> None:
    """Plain ``m2fdist train`` (one process, no launcher): a world of one, as the launcher would describe it."""
    if "RANK" in os.environ:
        return
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(free_port())})


def local_leader() -> bool:
    """The one process per node that runs node-wide chores (cleaners)."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


def share_cores() -> int | None:
    """Give this rank its share of the node's cores as torch threads, unless OMP_NUM_THREADS says otherwise.

    The deepspeed launcher (0.19; unlike torchrun) leaves OMP_NUM_THREADS unset, so every rank starts one
    thread per core: on 2 cores, 2 ranks ran 4 spinning OpenMP threads, and feature extraction took 8 s per
    batch instead of 1.4 s. Returns the thread count it set, or None when it left torch's default alone.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    local = int(os.environ.get("LOCAL_SIZE") or os.environ.get("LOCAL_WORLD_SIZE") or 1)
    if local <= 1:
        return None
    threads = max(1, len(os.sched_getaffinity(0)) // local)
    torch.set_num_threads(threads)
    return threads


def own_ninja() -> Path | None:
    """Put the ninja installed beside this Python (DeepSpeed depends on it) first on this process's PATH.

    torch.utils.cpp_extension (2.11) builds DeepSpeed's JIT ops (0.19) with the first ``ninja`` on PATH, and
    ninja 1.12 changed the hash it records per build command: a system ninja 1.11 and the environment's 1.13
    each find the other's build out of date. Launches whose PATH differed (the environment's bin folder on it
    or not: a shell that activated it, a script that did not) rebuilt the CPU comm op at every switch, 18–21 s
    on 2 cores while the other ranks waited on its lock; one run of the test suite did it five times. Returns
    the ninja now first on PATH, or None when the environment has none (PATH is then left alone).
    """
    ninja = Path(sys.executable).parent / "ninja"
    if not ninja.is_file():
        return None
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != str(ninja.parent):
        os.environ["PATH"] = os.pathsep.join([str(ninja.parent), path]) if path else str(ninja.parent)
    return ninja


def own_extensions() -> str | None:
    """Build DeepSpeed's JIT ops into this environment's own folder (``<venv>/torch_extensions``) unless
    TORCH_EXTENSIONS_DIR says where; returns the folder used, None where torch's default stays.

    torch keeps every environment's builds in one ``~/.cache/torch_extensions``, and a build's ``build.ninja``
    names its environment's paths: two checkouts' environments on one machine (or one home directory on a
    cluster) rebuilt each other's CPU comm op at every switch, about a minute on 2 cores while the other ranks
    waited. A Python outside a virtual environment, or one whose folder is not writable, keeps the default.
    """
    if "TORCH_EXTENSIONS_DIR" in os.environ:
        return os.environ["TORCH_EXTENSIONS_DIR"]
    if sys.prefix == sys.base_prefix or not os.access(sys.prefix, os.W_OK):
        return None
    os.environ["TORCH_EXTENSIONS_DIR"] = str(Path(sys.prefix) / "torch_extensions")
    return os.environ["TORCH_EXTENSIONS_DIR"]


# glibc's mallopt parameter for the mmap threshold, and the value set (the threshold's initial default, 128 KiB)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024


def return_freed_memory() -> bool:
    """Serve every allocation of 128 KiB or more from its own mmap, so freeing it returns it to the OS at once;
    unless MALLOC_MMAP_THRESHOLD_ already sets that. Returns whether it changed anything.

    glibc (2.3x) raises its mmap threshold as big blocks are freed, up to 32 MiB, and blocks under it come from
    the heap, which keeps what is freed for reuse. ZeRO-3 gathers each layer's weights into fresh buffers of a
    few MB and frees them after the layer: with the moving threshold a rank's resident memory grew towards the
    whole model although at most a few layers were ever gathered at once (a 41M-parameter decoder on 2 ranks:
    the saving of partitioning gone from the peak). The fixed threshold is what ``MALLOC_MMAP_THRESHOLD_=131072``
    would set at start-up; mallopt sets it for the running process, whichever launcher started it.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    libc = _glibc()
    return bool(libc and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def trim_freed_memory() -> None:
    """Give the pages of freed heap memory back to the OS (glibc's ``malloc_trim``); nothing elsewhere.

    Called after each ZeRO-3 optimizer step: the many small blocks (under the mmap threshold) that a step
    allocates and frees leave free pages inside the heap that glibc only returns from its top. Without it a
    rank's resting memory crept up by ~10 MB a step on a 530 MB decoder (2 ranks, fp32), all of it freed.
    """
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library once per process, if it is glibc (with mallopt and malloc_trim); None elsewhere (musl,
    macOS). Cached: ``find_library`` runs ldconfig in a subprocess, too slow for every optimizer step."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def init_distributed() -> None:
    # here, not at the top: deepspeed's import costs seconds; checks and --help never pay it
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    share_cores()
    own_ninja()
    own_extensions()
    if local_leader():
        shm_buffers.remove_orphans()
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name())
    gather_in_place()  # gloo: a gathered weight held once while it is gathered, not twice


@contextmanager
def started() -> Iterator[None]:
    """The process group up, with the JIT build-lock watcher running while it starts (and the work runs)."""
    own_extensions()  # before the watcher looks for locks there
    with stale_lock_watch(enabled=local_leader()):
        init_distributed()
        yield


def shutdown(rc: int) -> None:
    """Leave the process group together, then exit without C++ static teardown.

    With several ranks (torch 2.11, gloo), a non-master node sometimes died after finishing its work with
    "terminate called without an active exception" (exit code 250): a communication thread still joinable
    when the interpreter tore down. Everything is written and flushed by now, so the process exits directly.
    Past the barrier no peer opens this rank's shared-memory buffer by name any more: it is unlinked here.
    """
    if not dist.is_initialized():
        return
    world, rank = dist.get_world_size(), dist.get_rank()
    dist.barrier()
    shm_buffers.release_own_buffer(rank)
    dist.destroy_process_group()
    if world > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


def run_in_group(work: Callable[[], int], what: str) -> int:
    """Run a rank's ``work`` inside the process group and leave it together; returns its exit code.

    An exception in ``work`` becomes a :class:`~m2fdist.common.errors.RunFailed` naming the rank and ``what``
    stopped, with the original as its cause (the CLI prints its traceback and exits 1).
    """
    single_process_env()
    with started():
        try:
            rc = work()
        except Exception as e:
            raise RunFailed(f"rank {os.environ.get('RANK', 0)}: {what} stopped: {e}") from e
    shutdown(rc)
    return rc
