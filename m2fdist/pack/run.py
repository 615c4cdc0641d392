"""``m2fdist pack``: read a raw tree, plan shards, encode them in parallel processes, write index.json.

Reruns resume: finished shards (tar + stats) are kept, the rest are redone. ``--part i/n`` packs the
shards j with j mod n == i, so n machines writing into one shared folder cover the corpus once; the
run that finds every shard finished writes ``index.json`` (``--index-only`` rebuilds it at any time).
With ``--modalities text`` only the annotations are read and each sample is its json alone.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from m2fdist.common import atomic
from m2fdist.common.errors import RunFailed
from m2fdist.common.modalities import PACKED as MODALITIES
from m2fdist.common.progress import bar as progress_bar
from m2fdist.format.index import INDEX_NAME
from m2fdist.pack.index import build_index
from m2fdist.pack.plan import ShardPlan, fingerprint, parse_part, plan_shards, select_part
from m2fdist.pack.writer import PackOptions, is_finished, write_shard
from m2fdist.raw import read_corpus

PLAN_NAME = "pack.json"
_progress: Any = None


def _init_worker(progress_queue: Any) -> None:
    global _progress
    _progress = progress_queue


def _tick(n: int) -> None:
    _progress.put(n)


KILL_ENV = "M2FDIST_PACK_KILL_SHARD"  # tests: the worker given this shard SIGKILLs itself, like an OOM kill


def _pack_one(args: tuple[ShardPlan, Path, Path, PackOptions]) -> dict[str, Any]:
    plan, out, root, options = args
    if os.environ.get(KILL_ENV) == plan.name:
        os.kill(os.getpid(), signal.SIGKILL)
    return write_shard(plan, out, root, options, tick=_tick)


def pack(
    dataset: str,
    root: Path,
    out: Path,
    *,
    workers: int = 1,
    options: PackOptions | None = None,
    max_count: int = 200,
    max_mb: float = 256.0,
    part: str = "0/1",
    context: int = 8,
    overwrite: bool = False,
    index_only: bool = False,
    progress: bool = True,
    reader_options: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Pack ``root`` into ``out``; return the index when this run completed the corpus, else None."""
    options = options or PackOptions()
    if options.long_clips not in ("trim", "skip"):
        raise ValueError(f"--long-clips must be trim or skip, not {options.long_clips!r}")
    if options.max_side < 16 or options.max_seconds <= 0:
        raise ValueError("--max-side must be >= 16 and --max-seconds > 0")
    if workers < 1:
        raise ValueError("--workers must be >= 1")
    if options.modalities not in MODALITIES:
        raise ValueError(f"--modalities must be one of {', '.join(MODALITIES)}, not {options.modalities!r}")
    part_i, part_n = parse_part(part)
    root, out = Path(root).resolve(), Path(out)
    corpus = read_corpus(dataset, root, context=context, media=options.media, **(reader_options or {}))
    if root.is_file():  # a manifest: samples name their files relative to its folder, as its rows do
        root = root.parent
    plans = plan_shards(
        corpus, max_count=max_count, max_bytes=int(max_mb * 2**20),
        max_side=options.max_side, max_seconds=options.max_seconds, media=options.media,
    )
    settings = {"dataset": dataset, "context": context, "max_count": max_count, "max_mb": max_mb,
                **options.to_json(), **(reader_options or {})}
    plan_file = {
        "dataset": dataset, "fingerprint": fingerprint(plans, settings), "options": settings,
        "shards": [{"name": p.name, "split": p.split, "planned": len(p.utterances), "est_bytes": p.est_bytes}
                   for p in plans],
        "skipped": [s.to_json() for s in corpus.skipped],
        "labels": list(corpus.labels),  # index.json's label_names: the corpus's set in label_id order
    }
    out.mkdir(parents=True, exist_ok=True)
    _check_plan(out, plan_file, overwrite)
    atomic.remove_dead_temporaries(out)  # what killed writers of this host left; live ones stay
    atomic.write_json(out / PLAN_NAME, plan_file)

    if not index_only:
        mine = select_part(plans, (part_i, part_n))
        todo = [p for p in mine if not is_finished(out, p.name)]
        done = len(mine) - len(todo)
        print(f"pack {dataset}: {sum(len(p.utterances) for p in plans)} utterances in {len(plans)} shards "
              f"({len(corpus.skipped)} source items skipped by the reader); part {part_i}/{part_n}: "
              f"{len(mine)} shards, {done} already finished", file=sys.stderr)
        _run(todo, out, root, options, workers, progress)

    finished = [p for p in plans if is_finished(out, p.name)]
    if len(finished) < len(plans):
        print(f"{len(plans) - len(finished)} shards of other parts are not finished yet; index.json is "
              "written by the run that finishes the last one (or `m2fdist pack ... --index-only`)",
              file=sys.stderr)
        return None
    return build_index(out, plan_file)


def _check_plan(out: Path, plan_file: dict, overwrite: bool) -> None:
    """Refuse to mix shards of two different plans in one folder."""
    old_path = out / PLAN_NAME
    if not old_path.is_file():
        return
    old = json.loads(old_path.read_text())
    if old.get("fingerprint") == plan_file["fingerprint"]:
        return
    if not overwrite:
        raise ValueError(
            f"{out} holds shards packed with other options or another tree "
            f"(plan {old.get('fingerprint')} != {plan_file['fingerprint']}); "
            "use another --out, or --overwrite to replace them"
        )
    for path in out.iterdir():
        if path.suffix in (".tar", ".tmp") or path.name.endswith(".stats.json") or path.name == INDEX_NAME:
            path.unlink()


class PackWorkerDied(RunFailed):
    """A pack worker process ended abruptly (a signal, the OOM killer): the pack stops, resumable."""


def _run(todo: list[ShardPlan], out: Path, root: Path, options: PackOptions, workers: int, progress: bool) -> None:
    """Encode the shards in worker processes, moving one progress bar with per-utterance ticks.

    A worker killed mid-shard (SIGKILL from the OOM killer, a signal) breaks the pool: the pack then stops with
    an error that says so, instead of waiting for a result that never comes. Finished shards stay finished
    (tar + stats), so rerunning the same command resumes.
    """
    total = sum(len(p.utterances) for p in todo)
    bar = progress_bar(total, "packing", "utt", enabled=progress and total > 0)
    ctx = mp.get_context("spawn")
    ticks = ctx.Queue()
    results: list[dict] = []
    with ProcessPoolExecutor(min(workers, max(1, len(todo))), mp_context=ctx, initializer=_init_worker,
                             initargs=(ticks,)) as pool:
        futures = {pool.submit(_pack_one, (p, out, root, options)): p.name for p in todo}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _move(bar, ticks)
            for f in done:
                try:
                    results.append(f.result())
                except BrokenProcessPool:
                    unfinished = sorted(futures[g] for g in futures if not g.done() or g is f)
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise PackWorkerDied(
                        f"a pack worker died while encoding (killed by a signal, often the OOM killer: "
                        f"try fewer --workers or a smaller --max-side); {len(results)} shards of this run are "
                        f"finished and kept, {len(unfinished)} are not (e.g. {', '.join(unfinished[:3])}). "
                        "Run the same command again to resume.") from None
    _move(bar, ticks)
    bar.close()
    skipped = sum(len(r["skipped"]) for r in results)
    if skipped:
        print(f"{skipped} utterances could not be decoded and were skipped (see index.json)", file=sys.stderr)


def _move(bar: Any, ticks: Any) -> None:
    while True:
        try:
            bar.update(ticks.get_nowait())
        except (queue.Empty, OSError, EOFError):
            return
