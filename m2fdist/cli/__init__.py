"""The ``m2fdist`` command: one subcommand per step of the data flow, one module of this package per command.

Each command module has ``add_arguments(parser)`` and ``run(args) -> int``; the library does the work. Only the
chosen command's module is imported (``importlib``, on purpose: ``m2fdist --help`` answers without loading torch).
One error policy for every command (:func:`run_command`):

- wrong input (a missing file, a bad value, an untrusted shard): ``m2fdist CMD: error: ...`` on one line
  (``config error:`` for a configuration's), exit code 2, as argparse's own usage errors;
- started work that failed (:class:`~m2fdist.common.errors.RunFailed`: a pack worker died, a stage's launch
  failed, a rank's training raised): ``m2fdist CMD: failed: ...``, the traceback of its cause, exit code 1;
- a full disk (:class:`~m2fdist.common.atomic.NoSpaceLeft`: a pack or an export ran out of space):
  ``m2fdist CMD: failed: no space left on device writing ...`` on one line, exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Callable
from types import ModuleType

from m2fdist.common.atomic import NoSpaceLeft
from m2fdist.common.errors import RunFailed
from m2fdist.config.errors import ConfigError
from m2fdist.format.source import ShardError

# Every command and its one line of help, in the order of the data flow.
COMMANDS: dict[str, str] = {
    "synth": "write a synthetic raw corpus in the MELD or IEMOCAP layout",
    "pack": "pack a raw MELD / IEMOCAP tree into WebDataset shards",
    "summary": "summarise a shards location's index.json",
    "peek": "load one utterance batch and one dialog batch from shards and show them",
    "tiny-text": "build a tiny random RoBERTa + local tokenizer from shard texts",
    "faces": "find every packed utterance's faces once (MTCNN), for the visual stages",
    "train": "train a stage (under `deepspeed` use launch/train.py)",
    "export": "one safetensors model from a stage's sharded checkpoint",
    "extract": "write dialog feature shards from exported extractors",
    "eval": "score an exported model (or RUNS/model) on one split of shards",
    "report": "report.json, confusion matrices and the modality ablation table of a run",
    "predict": "each utterance's emotion: a CSV / JSONL manifest, or a MELD / IEMOCAP tree",
    "pipeline": "pack → text → audio → visual → extract → fusion → report",
}
INPUT_ERRORS = (ConfigError, ShardError, FileNotFoundError, ValueError, KeyError)


def command_module(name: str) -> ModuleType:
    """The module of command ``name`` (``tiny-text`` → ``m2fdist.cli.tiny_text``), imported now."""
    return importlib.import_module(f"m2fdist.cli.{name.replace('-', '_')}")


def build_parser(commands: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser (``commands=None``), or one in which only the named commands have their arguments."""
    p = argparse.ArgumentParser(prog="m2fdist", description="M2FNet emotion recognition in conversation, trained at "
                                "cluster scale: one command per step of the data flow.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, what in COMMANDS.items():
        full = commands is None or name in commands
        module = command_module(name) if full else None
        s = sub.add_parser(name, help=what, description=(module.__doc__ or what).split("\n\n")[0] if module else what,
                           add_help=full)
        if module is not None:
            module.add_arguments(s)
            s.set_defaults(_run_command=module.run)
    return p


def run_command(name: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command under the one error policy (module docstring)."""
    try:
        return run(args)
    except RunFailed as e:
        print(f"m2fdist {name}: failed: {e}", file=sys.stderr)
        if e.__cause__ is not None:
            traceback.print_exception(e.__cause__, file=sys.stderr)
        return 1
    except NoSpaceLeft as e:  # says all there is to say: the path and the space left; no traceback
        print(f"m2fdist {name}: failed: {e}", file=sys.stderr)
        return 1
    except ConfigError as e:
        print(f"m2fdist {name}: config error: {e}", file=sys.stderr)
        return 2
    except INPUT_ERRORS as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"m2fdist {name}: error: {message}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """``m2fdist [COMMAND] ...``: parse, run the command under the policy, return its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = [argv[0]] if argv and argv[0] in COMMANDS else []
    parser = build_parser(chosen)
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after the flags too (``--print-config train.lr=0.1``), as sweeps append them
    if extra and isinstance(getattr(args, "overrides", None), list) and not any(e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return run_command(args.command, args._run_command, args)
