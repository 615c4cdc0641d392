"""Config keys described from the dataclasses themselves: ``--help`` lists them, ``--print-config`` shows them resolved.

A field's description is its comment in the source: the comment at the end of its line and any comment
lines directly above it (joined into one line). Every field of a config dataclass carries one, and a test
checks it, so a key added without a description fails the suite rather than going undocumented.
Defaults come from an instance of the top-level config (what a YAML that sets nothing would give).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import sys
import textwrap
import tokenize
from collections.abc import Callable
from functools import cache
from typing import Any, TextIO

from omegaconf import OmegaConf

from m2fdist.config.errors import ConfigError
from m2fdist.format.source import scheme_of


@dataclasses.dataclass(frozen=True)
class Key:
    name: str  # dotted, as a YAML path or a key=value override: data.batch_size
    type: str
    default: Any
    help: str


@cache
def field_comments(cls: type) -> dict[str, str]:
    """Field name → its source comment (above it and at its line's end), for one dataclass."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source shipped: keys are still listed, without descriptions
        return {}
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if not text.startswith("noqa"):
                comments[tok.start[0]] = text.split("  # noqa")[0]
    lines = source.splitlines()
    out: dict[str, str] = {}
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, n = [], node.lineno - 1
        while n >= 1 and lines[n - 1].lstrip().startswith("#"):  # the comment block directly above
            above.insert(0, comments.get(n, ""))
            n -= 1
        trailing = [comments[i] for i in range(node.lineno, (node.end_lineno or node.lineno) + 1) if i in comments]
        out[node.target.id] = " ".join(p for p in [*above, *trailing] if p)
    return out


def describe(config: Any, prefix: str = "") -> list[Key]:
    """Every key of a config instance (nested dataclasses flattened to dotted names), in field order."""
    keys: list[Key] = []
    comments: dict[str, str] = {}
    for klass in reversed(type(config).__mro__):  # a subclass's comment on a field it redefines wins
        if dataclasses.is_dataclass(klass):
            comments.update(field_comments(klass))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            keys += describe(value, f"{name}.")
        else:
            keys.append(Key(name, str(f.type), value, comments.get(f.name, "")))
    return keys


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if value == "" or value.strip() != value else value
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def keys_help(config: Any, title: str = "config keys") -> str:
    """The ``--help`` epilog: each key with its type and default, its description wrapped below."""
    lines = [f"{title} (set in the YAML file or as key=value; default after '='):"]
    for k in describe(config):
        lines.append(f"  {k.name}: {k.type} = {_show(k.default)}")
        lines += textwrap.wrap(k.help, 100, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


def add_config_arguments(p: argparse.ArgumentParser, defaults: Any, config_help: str) -> None:
    """``--config FILE [key=value ...] [--print-config]`` on a command's parser, every key of ``defaults`` in its
    ``--help``."""
    p.epilog = keys_help(defaults)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--config", required=True, help=config_help)
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (YAML, then key=value overrides, then values read from local "
                        "data) and exit without launching anything; the data is never required")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=100")


def print_config(config: Any, file: TextIO | None = None) -> None:
    """The resolved config as YAML, the form a config file takes."""
    print(OmegaConf.to_yaml(OmegaConf.structured(config)), end="", file=file or sys.stdout)


def show_config(config: Any, check_data: Callable[[Any], None]) -> None:
    """``--print-config``: fill in what local data knows (``check_data``), then print the config either way.

    Inspecting a config must work where its data is not (a laptop, a login node) and must never reach out:
    data at a URL is not read, and a check against the data that fails is a note on stderr, not an error.
    """
    location = getattr(getattr(config, "data", None), "shards", "")
    if scheme_of(str(location)) not in ("", "file"):
        print(f"--print-config: data.shards={location} is not read while inspecting; values taken from the data "
              "(0 = unset) are left as written", file=sys.stderr)
    else:
        try:
            check_data(config)
        except ConfigError as e:
            print(f"--print-config: not checked against the data: {e}", file=sys.stderr)
    print_config(config)
