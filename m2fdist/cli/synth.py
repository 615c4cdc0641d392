"""``m2fdist synth``: a synthetic raw corpus in MELD's or IEMOCAP's exact layout, for the demo and the tests."""

from __future__ import annotations

import argparse
from pathlib import Path

from m2fdist.cli.args import positive, size
from m2fdist.synth import synth_iemocap, synth_meld


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--layout", choices=["meld", "iemocap"], required=True)
    s.add_argument("--out", type=Path, required=True, help="folder to create (MELD.Raw or IEMOCAP_full_release)")
    s.add_argument("--dialogs", type=positive(int), default=20,
                   help="MELD: train dialogs (dev/test scale with it); IEMOCAP: dialogs per session")
    s.add_argument("--dev-dialogs", type=int, default=None, help="MELD: dev dialogs (default 11%% of --dialogs)")
    s.add_argument("--test-dialogs", type=int, default=None, help="MELD: test dialogs (default 27%% of --dialogs)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=size, default=(320, 180), help="frame size WxH (MELD's clips are 1280x720)")
    s.add_argument("--fps", type=positive(int), default=24)
    s.add_argument("--bad-files", action="store_true", help="plant MELD's known bad files")
    s.add_argument("--workers", type=positive(int), default=2)


def run(args: argparse.Namespace) -> int:
    if args.layout == "meld":
        manifest = synth_meld(args.out, args.dialogs, args.seed, size=args.size, fps=args.fps,
                              bad_files=args.bad_files, workers=args.workers, dev_dialogs=args.dev_dialogs,
                              test_dialogs=args.test_dialogs)
    else:
        if args.bad_files:
            raise ValueError("--bad-files plants MELD's known bad files; the iemocap layout has none")
        if args.dev_dialogs is not None or args.test_dialogs is not None:
            raise ValueError("--dev-dialogs / --test-dialogs size MELD's splits; IEMOCAP's are its sessions")
        manifest = synth_iemocap(args.out, args.dialogs, args.seed, size=args.size, fps=args.fps,
                                 workers=args.workers)
    n = len(manifest["utterances"])
    print(f"wrote a synthetic {args.layout} tree with {n} utterances to {args.out}"
          + (f" ({len(manifest['planted'])} bad files planted)" if manifest.get("planted") else ""))
    return 0
