"""``m2fdist pack``: read a raw tree, plan shards, encode them in parallel processes, write index.json.

Reruns resume: finished shards (tar + stats) are kept, the rest are redone. ``--part i/n`` packs the
shards j with j mod n == i, so n machines writing into one shared folder cover the corpus once; the
run that finds every shard finished writes ``index.json`` (``--index-only`` rebuilds it at any time).
With ``--modalities text`` only the annotations are read and each sample is its json alone.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import queue
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from m2fdist.pack.index import INDEX_NAME, build_index
from m2fdist.pack.plan import ShardPlan, fingerprint, parse_part, plan_shards, select_part
from m2fdist.pack.writer import MODALITIES, PackOptions, is_finished, write_json_atomic, write_shard
from m2fdist.raw import read_corpus

PLAN_NAME = "pack.json"
_progress: Any = None


def _init_worker(progress_queue: Any) -> None:
    global _progress
    _progress = progress_queue


def _tick(n: int) -> None:
    _progress.put(n)


def _pack_one(args: tuple[ShardPlan, Path, Path, PackOptions]) -> dict[str, Any]:
    plan, out, root, options = args
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
    }
    out.mkdir(parents=True, exist_ok=True)
    _check_plan(out, plan_file, overwrite)
    write_json_atomic(out / PLAN_NAME, plan_file)

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
    index = build_index(out, plan_file)
    write_json_atomic(out / INDEX_NAME, index)
    return index


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


def _run(todo: list[ShardPlan], out: Path, root: Path, options: PackOptions, workers: int, progress: bool) -> None:
    total = sum(len(p.utterances) for p in todo)
    bar = tqdm(total=total, unit="utt", desc="packing", disable=not progress or total == 0, file=sys.stderr)
    ctx = mp.get_context("spawn")
    ticks = ctx.Queue()
    tasks = [(p, out, root, options) for p in todo]
    with ctx.Pool(min(workers, max(1, len(todo))), initializer=_init_worker, initargs=(ticks,)) as pool:
        pending = pool.imap_unordered(_pack_one, tasks)
        results = _drain(pending, ticks, bar, len(tasks))
    bar.close()
    skipped = sum(len(r["skipped"]) for r in results)
    if skipped:
        print(f"{skipped} utterances could not be decoded and were skipped (see index.json)", file=sys.stderr)


def _drain(pending: Any, ticks: Any, bar: tqdm, n: int) -> list[dict]:
    """Collect shard results while moving the progress bar with per-utterance ticks from the workers."""
    results = []
    while len(results) < n:
        try:
            results.append(pending.next(timeout=0.2))
        except mp.TimeoutError:
            pass
        while True:
            try:
                bar.update(ticks.get_nowait())
            except queue.Empty:
                break
    return results
