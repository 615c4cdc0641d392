"""The ``m2fdist`` command: one subcommand per step of the data flow.

Heavy imports happen inside each subcommand so ``m2fdist --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _size(value: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 320x180, got {value!r}") from None
    if w < 16 or h < 16 or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"size {value}: both sides must be even and >= 16")
    return w, h


def _positive(kind: type):
    def parse(value: str):
        v = kind(value)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
        return v

    return parse


def cmd_synth(args: argparse.Namespace) -> int:
    from m2fdist.synth import synth_iemocap, synth_meld

    if args.layout == "meld":
        manifest = synth_meld(args.out, args.dialogs, args.seed, size=args.size, fps=args.fps,
                              bad_files=args.bad_files, workers=args.workers, dev_dialogs=args.dev_dialogs,
                              test_dialogs=args.test_dialogs)
    else:
        if args.bad_files:
            print("--bad-files plants MELD's known bad files; the iemocap layout has none", file=sys.stderr)
            return 2
        if args.dev_dialogs is not None or args.test_dialogs is not None:
            print("--dev-dialogs / --test-dialogs size MELD's splits; IEMOCAP's are its sessions", file=sys.stderr)
            return 2
        manifest = synth_iemocap(args.out, args.dialogs, args.seed, size=args.size, fps=args.fps,
                                 workers=args.workers)
    n = len(manifest["utterances"])
    print(f"wrote a synthetic {args.layout} tree with {n} utterances to {args.out}"
          + (f" ({len(manifest['planted'])} bad files planted)" if manifest.get("planted") else ""))
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from m2fdist.pack import PackOptions, pack, summary
    from m2fdist.pack.run import PackWorkerDied

    out = args.out or Path("shards") / args.dataset
    options = PackOptions(max_side=args.max_side, max_seconds=args.max_seconds, long_clips=args.long_clips,
                          modalities=args.modalities)
    reader_options = {"dev_seed": args.dev_seed} if args.dataset == "iemocap" else {}
    try:
        index = pack(args.dataset, args.root, out, workers=args.workers, options=options,
                     max_count=args.shard_size, max_mb=args.shard_mb, part=args.part, context=args.context,
                     overwrite=args.overwrite, index_only=args.index_only, progress=not args.no_progress,
                     reader_options=reader_options)
    except PackWorkerDied as e:
        print(f"m2fdist pack: error: {e}", file=sys.stderr)
        return 1
    if index is not None:
        print(summary(index))
        print(f"index: {Path(out) / 'index.json'}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from m2fdist.pack import load_index, summary

    print(summary(load_index(args.shards)))
    return 0


def cmd_peek(args: argparse.Namespace) -> int:
    from m2fdist.data import LoaderConfig, make_loader
    from m2fdist.pack import load_index

    names = load_index(args.shards)["label_names"]
    for level in ("utterance", "dialog"):
        config = LoaderConfig(level=level, batch_size=args.batch_size, num_workers=args.workers, train=False)
        loader = make_loader(args.shards, args.split, config, rank=0, world_size=1)
        batch = next(iter(loader))
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in batch.items() if hasattr(v, "shape"))
        print(f"{level} batch ({len(loader)} per epoch): {shapes}")
    first = batch["text"][0]
    labels = batch["labels"][0][batch["mask"][0]].tolist()
    print(f"dialog {batch['dialog'][0]}:")
    for text, label in zip(first, labels, strict=True):
        print(f"  [{names[label]:>8s}] {text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="m2fdist", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a synthetic raw corpus in the MELD or IEMOCAP layout")
    s.add_argument("--layout", choices=["meld", "iemocap"], required=True)
    s.add_argument("--out", type=Path, required=True, help="folder to create (MELD.Raw or IEMOCAP_full_release)")
    s.add_argument("--dialogs", type=_positive(int), default=20,
                   help="MELD: train dialogs (dev/test scale with it); IEMOCAP: dialogs per session")
    s.add_argument("--dev-dialogs", type=int, default=None, help="MELD: dev dialogs (default 11%% of --dialogs)")
    s.add_argument("--test-dialogs", type=int, default=None, help="MELD: test dialogs (default 27%% of --dialogs)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=_size, default=(320, 180), help="frame size WxH (MELD's clips are 1280x720)")
    s.add_argument("--fps", type=_positive(int), default=24)
    s.add_argument("--bad-files", action="store_true", help="plant MELD's known bad files")
    s.add_argument("--workers", type=_positive(int), default=2)
    s.set_defaults(func=cmd_synth)

    k = sub.add_parser("pack", help="pack a raw MELD / IEMOCAP tree into WebDataset shards")
    k.add_argument("dataset", choices=["meld", "iemocap"])
    k.add_argument("--root", type=Path, required=True, help="MELD.Raw or IEMOCAP_full_release folder")
    k.add_argument("--out", type=Path, default=None, help="shards folder (default: shards/<dataset>/)")
    k.add_argument("--workers", type=_positive(int), default=2, help="parallel encoding processes")
    k.add_argument("--max-side", type=_positive(int), default=320,
                   help="re-encode video so its longer side is at most this (see bench/data_bench.py)")
    k.add_argument("--max-seconds", type=_positive(float), default=60.0,
                   help="clips longer than this (MELD's wrongly cut ones) are trimmed or skipped")
    k.add_argument("--long-clips", choices=["trim", "skip"], default="trim")
    k.add_argument("--modalities", choices=["text,audio,visual", "text"], default="text,audio,visual",
                   help="text: json-only samples from the CSVs / transcripts alone; clips are not needed, "
                        "probed or decoded, and a missing clip is not a skip")
    k.add_argument("--shard-size", type=_positive(int), default=200, help="max utterances per shard")
    k.add_argument("--shard-mb", type=_positive(float), default=256.0, help="max (bounded) MB per shard")
    k.add_argument("--part", default="0/1", help="pack slice i of n (i/n) so machines can share a corpus")
    k.add_argument("--context", type=int, default=8, help="neighbouring utterances kept in each sample's json")
    k.add_argument("--dev-seed", type=int, default=0, help="IEMOCAP: seed of the 10%% dev dialogs")
    k.add_argument("--overwrite", action="store_true", help="replace shards packed with other options")
    k.add_argument("--index-only", action="store_true", help="only (re)build index.json from finished shards")
    k.add_argument("--no-progress", action="store_true")
    k.set_defaults(func=cmd_pack)

    m = sub.add_parser("summary", help="summarise a shards folder's index.json")
    m.add_argument("shards", type=Path)
    m.set_defaults(func=cmd_summary)
    e = sub.add_parser("peek", help="load one utterance batch and one dialog batch from shards and show them")
    e.add_argument("shards", type=Path)
    e.add_argument("--split", default="train")
    e.add_argument("--batch-size", type=_positive(int), default=4)
    e.add_argument("--workers", type=int, default=0)
    e.set_defaults(func=cmd_peek)

    t = sub.add_parser("tiny-text", help="build a tiny random RoBERTa + local tokenizer from shard texts")
    t.add_argument("--shards", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--hidden", type=int, default=32)
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--vocab", type=int, default=500)
    t.set_defaults(func=cmd_tiny_text)
    for name, what in (("train", "train a stage (see m2fdist.train; under `deepspeed` use launch/train.py)"),
                       ("extract", "write dialog feature shards from exported extractors"),
                       ("export", "one safetensors model from a stage's sharded checkpoint"),
                       ("pipeline", "pack → text → audio → visual → extract → fusion → report"),
                       ("report", "report.json, confusion matrices and the modality ablation table of a run"),
                       ("eval", "score an exported model (or RUNS/model) on one split of shards"),
                       ("predict", "each utterance's emotion: a CSV / JSONL manifest, or a MELD / IEMOCAP tree"),
                       ("faces", "find every packed utterance's faces once (MTCNN), for the visual stages")):
        sub.add_parser(name, help=what, add_help=False)
    return p


def cmd_tiny_text(args: argparse.Namespace) -> int:
    from m2fdist.models.tiny_text import build_tiny_roberta, shard_texts

    texts = shard_texts(args.shards)
    build_tiny_roberta(args.out, texts, vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers)
    print(f"tiny RoBERTa (hidden {args.hidden}, {args.layers} layers) with a tokenizer trained on "
          f"{len(texts)} utterances: {args.out}")
    return 0


# Subcommands that own their whole argument list (key=value overrides, launcher flags).
DELEGATED = {"train": "m2fdist.train", "extract": "m2fdist.extract", "export": "m2fdist.export",
             "pipeline": "m2fdist.pipeline", "report": "m2fdist.report", "predict": "m2fdist.predict",
             "eval": "m2fdist.evaluate", "faces": "m2fdist.faces"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        import importlib

        return importlib.import_module(DELEGATED[argv[0]]).main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"m2fdist {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
