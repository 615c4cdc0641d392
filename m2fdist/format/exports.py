"""The export format both sides share: a stage export and a bundle of them.

A stage export (``m2fdist export``) is a folder with ``model.safetensors`` and ``config.json`` (the run config it
was trained with, its checkpoint tag, stage and labels), and for text the encoder's config and tokenizer in
``text_encoder/``. A bundle (``RUNS/model``) holds one export per part (``text/``, ``audio/``, ``visual/``,
``fusion/``; ``text/`` alone for a text-only model), its own ``config.json`` and a model card. Config checks,
the API, evaluation and the loader read exports through these helpers: JSON only, never a pickle; a bundle
from elsewhere may hold anything, so every malformed file is a ValueError naming it. An export's run config
says how the model was trained, not where: local paths, commands, URLs and accounts are left out
(:func:`public_meta`).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

from m2fdist.common.labels import LABELS, check_label_names, run_labels
from m2fdist.common.modalities import STAGES
from m2fdist.common.paths import looks_local
from m2fdist.format.source import scheme_of

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
REPORT = "report.json"  # a bundle's copy of the scores its model card shows (results/card.public_report)
# An audio or visual export's "packing": the pack options that decide what a clip becomes before an extractor
# sees it, so that prediction prepares raw clips the same way.
PACKING_KEYS = ("max_side", "max_seconds", "long_clips")
BUNDLE_PARTS = STAGES  # a bundle holds one export per trained stage, under the stage's name
MAX_JSON_BYTES = 16 << 20  # an export's or a bundle's config.json; real ones are a few kB


def is_export(path: Path) -> bool:
    """One stage's export (as opposed to a bundle, or neither)."""
    return (Path(path) / WEIGHTS).is_file()


def read_meta(path: Path) -> dict[str, Any]:
    """An export's ``config.json``: the run config (``run``), ``stage``, ``tag`` and ``labels``.

    FileNotFoundError when the folder holds no export, ValueError when its config is not an export's.
    """
    path = Path(path)
    if not is_export(path):
        raise FileNotFoundError(f"{path / WEIGHTS} not found: run `m2fdist export` first")
    if not (path / CONFIG).is_file():
        raise ValueError(f"{path / CONFIG}: missing (an export holds its config beside its weights)")
    meta = read_json(path / CONFIG)
    if not isinstance(meta, dict) or not isinstance(meta.get("run"), dict):
        raise ValueError(f"{path / CONFIG}: not an export's config (no run config in it)")
    return public_meta(meta)


def read_json(path: Path, limit: int = MAX_JSON_BYTES) -> Any:
    """A config file of an export or a bundle, parsed; ValueError naming the file for anything that is not JSON.

    Bundles come from other people and the Hub: a file past ``limit`` bytes, one that is not UTF-8, broken
    JSON and JSON nested deeper than the parser's recursion are each a one-line error, not a traceback.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > limit:
            raise ValueError(f"{path}: {size:,} bytes, too large for a config file (at most {limit:,})")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text, so not JSON") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: a folder, not a JSON file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to be a config") from None


def labels_of(meta: dict[str, Any]) -> list[str]:
    """The class names of an export's outputs, in order: its own ``labels`` (exports since they carry them),
    else those of the run config it holds (:func:`~m2fdist.common.labels.run_labels`)."""
    labels = meta.get("labels")
    if labels is None:
        run = meta.get("run") if isinstance(meta.get("run"), dict) else {}
        dataset, names = run.get("dataset"), run.get("labels")
        if not names and dataset not in LABELS:
            raise ValueError(f"the export names no labels, and its dataset {dataset!r} is none of {sorted(LABELS)}")
        return check_label_names(run_labels(dataset, names), "the export's run")
    return check_label_names(labels, "the export's")


def bundle_config(path: Path) -> dict[str, Any]:
    """A bundle's own ``config.json``, read once and checked: a JSON object whose ``parts`` name text and any of
    the other stages once each, every one of them there; ``parts`` comes back in stage order.

    Only these parts are ever read: a folder may hold other parts (an earlier run's, copied in by hand), and a
    model must never be assembled from two runs. The loader passes this config on rather than reading the file
    again.
    """
    path = Path(path)
    file = path / CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no {CONFIG}: give a bundle (the pipeline writes RUNS/model) or a stage "
                                "export (m2fdist export RUN)")
    config = read_json(file)
    if not isinstance(config, dict):
        raise ValueError(f"{file}: not a bundle's config (a JSON object with its dataset, labels and parts)")
    parts = config.get("parts")
    if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts) or "text" not in parts \
            or not set(parts) <= set(BUNDLE_PARTS) \
            or len(set(parts)) != len(parts):
        raise ValueError(f"{file}: not a bundle's config (parts must list text and any of "
                         f"{', '.join(BUNDLE_PARTS[1:])} once each, not {parts!r})")
    if missing := [p for p in parts if not is_export(path / p)]:
        raise FileNotFoundError(f"{path}: its {CONFIG} names {', '.join(missing)}, but there is no "
                                f"{', '.join(p + '/' + WEIGHTS for p in missing)}")
    return {**config, "parts": [p for p in BUNDLE_PARTS if p in parts]}


def bundle_parts(path: Path) -> list[str]:
    """The parts a bundle's own ``config.json`` names, each checked to be there (:func:`bundle_config`)."""
    return list(bundle_config(path)["parts"])


def resolve_model(path: Path) -> Path:
    """The export that scores for ``path``: ``path`` itself when it is one, else the bundle's fusion export
    (its text export for a text-only bundle)."""
    path = Path(path)
    if is_export(path):
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder: give an export (m2fdist export RUN) or a pipeline's "
                                "RUNS/model")
    parts = bundle_parts(path)
    return path / ("fusion" if "fusion" in parts else "text")


# -- what an export tells whoever loads it --------------------------------------------------------------------

# An export's run config travels with the weights to colleagues and the Hub. Where the run read its shards and
# wrote its checkpoints, the commands that fetched them (a shard URL may carry credentials in its query), its
# DeepSpeed JSON and whose W&B it logged to are the training machine's business: loading needs none of them
# (the schema's defaults stand in), and a bundle's command must never be what `m2fdist eval` runs.
PRIVATE_KEYS = ("output_dir", "resume", "deepspeed", "wandb", "data.shards", "data.s3_command", "data.gs_command")
# A local text.model is the export's own copy of the encoder's config and tokenizer (its weights are in
# model.safetensors), relative to the export folder: a path that names no folder of the training machine.
LOCAL_TEXT_MODEL = "./text_encoder"
NAMED_FACES = ("auto", "mtcnn")


def public_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """An export's ``config.json`` without local paths, commands, URLs or accounts: what an export writes and
    what :func:`read_meta` gives (so an export written before this still loads without them).

    Drops :data:`PRIVATE_KEYS`; a local (or URL) ``text.model`` becomes :data:`LOCAL_TEXT_MODEL` (a Hub id stays:
    it says which encoder was fine-tuned), a local init weights file its file name, a face-set folder ``auto``.
    """
    meta = copy.deepcopy(meta)
    run = meta.get("run")
    if not isinstance(run, dict):
        return meta
    for key in PRIVATE_KEYS:
        section, _, name = key.rpartition(".")
        holder = run.get(section) if section else run
        if isinstance(holder, dict):
            holder.pop(name, None)
    text, visual = run.get("text"), run.get("visual")
    if isinstance(text, dict) and isinstance(text.get("model"), str) and _names_a_place(text["model"]):
        text["model"] = LOCAL_TEXT_MODEL
    if isinstance(visual, dict):
        for key in ("face_init", "scene_init"):
            if isinstance(visual.get(key), str) and _names_a_place(visual[key]):
                visual[key] = visual[key].replace("\\", "/").rsplit("/", 1)[-1].split("?", 1)[0]
        if isinstance(visual.get("faces"), str) and visual["faces"] not in NAMED_FACES:
            visual["faces"] = "auto"
    return meta


def _names_a_place(value: str) -> bool:
    """A local path or a URL, as opposed to a Hub id (``org/name``) or a named init (``imagenet``)."""
    return value != LOCAL_TEXT_MODEL and (bool(scheme_of(value)) or looks_local(value) or "\\" in value)


# -- weights -------------------------------------------------------------------------------------------------

# safetensors' own bound on the JSON header, and the bytes per element of each dtype it names
MAX_HEADER_BYTES = 100_000_000
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def weights_header(path: Path) -> dict[str, dict[str, Any]]:
    """The tensors a safetensors file holds, ``name → {"dtype", "shape", "data_offsets"}``, read and checked
    without loading any: the header's length, JSON, every entry's dtype, shape and byte range, and that the
    ranges tile the file's data exactly. What a loader compares with the model before allocating anything.

    ValueError naming the file when it is not a well-formed safetensors file (a bundle from elsewhere may be
    anything); FileNotFoundError when it is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _not_safetensors(path, f"{size} bytes, shorter than the header's 8-byte length")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise _not_safetensors(path, f"its header claims {n:,} bytes, in a file of {size:,}")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _not_safetensors(path, "its header is not JSON") from None
    if not isinstance(header, dict):
        raise _not_safetensors(path, "its header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _not_safetensors(path, "its __metadata__ is not a mapping of strings")
    end = 0
    for name, info in sorted(header.items(), key=lambda kv: _offsets(kv[1])):
        why = _entry_problem(info)
        if why is None and info["data_offsets"][0] != end:
            why = f"data starts at byte {info['data_offsets'][0]}, not {end} where the previous tensor's ends"
        if why is not None:
            raise _not_safetensors(path, f"tensor {name!r}: {why}")
        end = info["data_offsets"][1]
    if end != size - 8 - n:
        raise _not_safetensors(path, f"its tensors cover {end:,} bytes of data, the file holds {size - 8 - n:,}")
    return header


def _offsets(info: Any) -> tuple[int, int]:
    """Sort key of a header entry: its byte range (malformed entries first, so they are the ones reported)."""
    try:
        return int(info["data_offsets"][0]), 1
    except (TypeError, KeyError, IndexError, ValueError):
        return -1, 0


def _entry_problem(info: Any) -> str | None:
    """Why one header entry is not a tensor's dtype, shape and byte range, or None."""
    if not isinstance(info, dict):
        return "not a mapping"
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        return f"unknown dtype {dtype!r}"
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        return f"shape {shape!r} is not a list of sizes"
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        return f"data_offsets {offsets!r} is not [begin, end]"
    if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
        return f"{offsets[1] - offsets[0]} bytes for a {dtype} tensor of shape {shape}"
    return None


def _not_safetensors(path: Path, why: str) -> ValueError:
    return ValueError(f"{path}: not a well-formed safetensors file ({why})")


def load_weights(path: Path) -> dict[str, Any]:
    """A safetensors file's tensors (a state dict on the CPU), its header checked first
    (:func:`weights_header`): one line naming the file, never safetensors' own traceback, for a bad one."""
    weights_header(path)
    # here, not at the top: torch costs seconds; config checks and --help read exports' JSON only
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise _not_safetensors(Path(path), str(e).splitlines()[0]) from None
