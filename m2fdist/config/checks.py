"""Everything that can be wrong with a configuration, found before any process group starts.

Run on every rank identically: an unknown value, a number out of range, a missing shards folder or local model
path, shards for another corpus, an export of the wrong stage. Values the data knows (feature widths, frame
counts) are filled in here from it; a value given that disagrees is an error.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from m2fdist.common.labels import DATASETS, LABELS, check_label_names
from m2fdist.common.modalities import BY_LETTER, MODALITIES, NAMES, STAGES
from m2fdist.common.paths import looks_local
from m2fdist.common.stop_signals import SIGNALS
from m2fdist.config.errors import ConfigError
from m2fdist.config.schema import PRECISIONS, ExtractConfig, RunConfig
from m2fdist.format.exports import read_meta
from m2fdist.format.index import load_index, packed_modalities
from m2fdist.format.source import ReadPolicy, ShardError, ShardSource, scheme_of
from m2fdist.models.losses import class_weights
from m2fdist.models.visual import WEIGHT_FILES

EXTRACT_RANGES = (("data.num_workers", 0, True), ("data.num_frames", 0, True), ("data.frame_width", 0, True),
                  ("data.frame_height", 0, True), ("extract.chunk_utterances", 1, True))


def check_extract_values(cfg: ExtractConfig) -> None:
    """What an extraction config says on its own, without reading the shards or the exports."""
    if cfg.dataset not in DATASETS:
        raise ConfigError(f"dataset must be one of {', '.join(DATASETS)}, not {cfg.dataset!r}")
    check_ranges(cfg, EXTRACT_RANGES)
    if not any(getattr(cfg.extract, name) for name in NAMES):
        raise ConfigError("extract.text / extract.audio / extract.visual: give at least one exported model")


def check_extract_data(cfg: ExtractConfig) -> None:
    """The shards and the exports an extraction config names: their kinds, and the frame count the visual
    export was trained with (``data.num_frames`` 0 takes it)."""
    index = check_shards(cfg)
    if index.get("kind") == "features":
        raise ConfigError(f"data.shards={cfg.data.shards} holds dialog features: extraction reads the utterance "
                          "shards `m2fdist pack` writes")
    exports = {name: getattr(cfg.extract, name) for name in NAMES if getattr(cfg.extract, name)}
    for name, path in exports.items():
        run = export_run_config(f"extract.{name}", path)
        if run.get("stage") != name:
            raise ConfigError(f"extract.{name}={path} is an export of the {run.get('stage')} stage")
        if name != "text" and name not in packed_modalities(index):
            raise ConfigError(f"data.shards={cfg.data.shards} holds text-only samples: extract.{name} needs "
                              "shards packed with media")
        if name == "visual":
            trained = int(run.get("data", {}).get("num_frames", 0))
            if not cfg.data.num_frames:
                cfg.data.num_frames = trained
            elif cfg.data.num_frames != trained:
                raise ConfigError(f"data.num_frames={cfg.data.num_frames}, but the visual export {path} was trained "
                                  f"on {trained} frames (leave data.num_frames unset, or 0, to take it from there)")
    if "visual" in exports and cfg.data.num_frames < 1:
        raise ConfigError(f"extract.visual={exports['visual']}: its config gives no data.num_frames")


def export_run_config(key: str, path: str) -> dict[str, Any]:
    """The run config an export folder was trained with (:func:`~m2fdist.format.exports.read_meta`), or a
    ConfigError naming the key."""
    try:
        return read_meta(Path(path).expanduser())["run"]
    except FileNotFoundError:
        raise ConfigError(f"{key}={path}: no exported model there (run `m2fdist export RUN`)") from None
    except ValueError as e:
        raise ConfigError(f"{key}={path}: {e}") from None


def check_values(cfg: RunConfig) -> None:
    """What a training config says on its own: names, choices and ranges, without touching the disk."""
    if cfg.stage not in STAGES:
        raise ConfigError(f"stage must be one of {STAGES}, not {cfg.stage!r}")
    if cfg.dataset not in DATASETS:
        raise ConfigError(f"dataset must be one of {', '.join(DATASETS)}, not {cfg.dataset!r}")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {cfg.precision!r}")
    if cfg.wandb.mode not in ("online", "offline", "disabled"):
        raise ConfigError(f"wandb.mode must be online, offline or disabled, not {cfg.wandb.mode!r}")
    if cfg.triplet.mining not in ("all", "semihard"):
        raise ConfigError(f"triplet.mining must be all or semihard, not {cfg.triplet.mining!r}")
    if len(cfg.triplet.weights) != 3:
        raise ConfigError("triplet.weights takes three numbers: L_AMT, L_Cov, L_Var")
    if cfg.triplet.ce_weight < 0 or cfg.triplet.ce_temperature <= 0:
        raise ConfigError("triplet.ce_weight must be >= 0 and triplet.ce_temperature > 0")
    for name in ("batch_size", "num_frames"):
        if getattr(cfg.data, name) < 1:
            raise ConfigError(f"data.{name} must be >= 1")
    unknown = [s for s in cfg.train.stop_signals if s not in SIGNALS]
    if unknown:
        raise ConfigError(f"train.stop_signals: {unknown} not among {', '.join(SIGNALS)}")
    if cfg.train.requeue not in ("auto", "never"):
        raise ConfigError(f"train.requeue must be auto or never, not {cfg.train.requeue!r}")
    if cfg.train.nonfinite not in ("stop", "skip"):
        raise ConfigError(f"train.nonfinite must be stop or skip, not {cfg.train.nonfinite!r}")
    if cfg.data.train_split == HELD_OUT:
        raise ConfigError(f"data.train_split={HELD_OUT}: the {HELD_OUT} split is held out, for the scores a report "
                          "and a model card give; train on train (the default)")
    check_ranges(cfg)
    _check_loss(cfg)


def check_data(cfg: RunConfig) -> None:
    """The shards a training config names: the right corpus, the right kind for the stage, and the fusion
    stage's feature widths read from them."""
    index = check_shards(cfg)
    check_splits(cfg, index)
    if cfg.stage in ("audio", "visual"):
        if cfg.stage not in packed_modalities(index):
            raise ConfigError(f"data.shards={cfg.data.shards} holds text-only samples (packed with --modalities "
                              f"text): the {cfg.stage} stage needs shards packed with media")
    if cfg.stage == "fusion":
        resolve_feature_dims(cfg, index)
    elif index.get("kind") == "features":
        raise ConfigError(f"data.shards={cfg.data.shards} holds dialog features (m2fdist extract): the "
                          f"{cfg.stage} stage reads utterance shards (m2fdist pack)")


# The split no stage may train on: a report's and a model card's scores are the test split's.
HELD_OUT = "test"


def check_splits(cfg: RunConfig, index: dict[str, Any]) -> None:
    """``data.train_split`` and ``data.eval_splits`` name splits the shards hold: a typo fails here, not as a
    KeyError in every rank after the launch (and after the first epoch, for an evaluation split)."""
    have = sorted(index.get("splits", {}))
    asked = [("data.train_split", cfg.data.train_split)] + [("data.eval_splits", s) for s in cfg.data.eval_splits]
    for key, split in asked:
        if split not in have:
            raise ConfigError(f"{key}: {split!r} is not a split of {cfg.data.shards} (its index.json has "
                              f"{', '.join(have) or 'none'})")


def resolve_feature_dims(cfg: RunConfig, index: dict[str, Any]) -> None:
    """``fusion.dim_*`` from the features' index.json: 0 takes the width there, another value must equal it."""
    if index.get("kind") != "features":
        raise ConfigError(f"data.shards={cfg.data.shards} holds utterance shards: the fusion stage reads the "
                          "dialog features `m2fdist extract` writes")
    if "dims" not in index:  # written by hand or by an older tool: explicit widths are trusted
        unset = [f"fusion.{BY_LETTER[c].dim_key}" for c in cfg.fusion.modalities
                 if not getattr(cfg.fusion, BY_LETTER[c].dim_key)]
        if unset:
            raise ConfigError(f"{cfg.data.shards}/index.json records no feature widths (dims): set {', '.join(unset)}")
        return
    dims = index["dims"]
    for m in MODALITIES:
        key, given, have = f"fusion.{m.dim_key}", getattr(cfg.fusion, m.dim_key), dims.get(m.name)
        if have is None:
            if m.letter in cfg.fusion.modalities:
                raise ConfigError(f"fusion.modalities={cfg.fusion.modalities} uses {m.name}, but "
                                  f"{cfg.data.shards}/index.json holds no {m.name} features")
            continue
        if not given:
            setattr(cfg.fusion, m.dim_key, int(have))
        elif given != have:
            raise ConfigError(f"{key}={given}, but the {m.name} features in {cfg.data.shards} are {have}-d "
                              f"(leave {key} unset, or 0, to take it from their index.json)")


def check_model_paths(cfg: RunConfig) -> None:
    """Local model paths the stage will load exist: a typo fails here, not after the launch.

    Called by the entry point (``m2fdist train``) before anything starts, not by
    :func:`m2fdist.config.load.load_config`, so a config can be loaded and inspected on a machine that does not
    hold the model.
    """
    if cfg.stage == "text" and looks_local(cfg.text.model) and not Path(cfg.text.model).expanduser().exists():
        raise ConfigError(f"text.model={cfg.text.model}: no such local model folder (a hub model is named org/name)")
    if cfg.stage == "visual":
        for key in ("face_init", "scene_init"):
            value = getattr(cfg.visual, key)
            if value.endswith(WEIGHT_FILES) and not Path(value).expanduser().is_file():
                raise ConfigError(f"visual.{key}={value}: no such weights file")


def _check_loss(cfg: RunConfig) -> None:
    """train.class_weights and train.focal_gamma, checked with the label counts they will be built from."""
    t = cfg.train
    if t.focal_gamma < 0:
        raise ConfigError(f"train.focal_gamma must be >= 0, not {t.focal_gamma}")
    spec = t.class_weights
    if not isinstance(spec, str | list) or (isinstance(spec, list) and not all(
            isinstance(w, int | float) and not isinstance(w, bool) for w in spec)):
        raise ConfigError(f"train.class_weights must be none, inverse, sqrt_inverse or a list of numbers, not {spec!r}")
    if not cfg.num_classes:  # a manifest run before its shards are read: check_shards comes back here
        return
    try:
        class_weights(spec, [1] * cfg.num_classes)
    except ValueError as e:
        raise ConfigError(f"train.class_weights: {e}") from None


# (key, lowest allowed value, whether the bound itself is allowed): numbers that make no sense are refused
# before launch instead of failing later (log_every=0 divides by zero at step 1, knn=0 votes for nobody).
RANGES = (
    ("train.max_steps", 0, True), ("train.epochs", 1, True), ("train.grad_accum", 1, True),
    ("train.keep_last", 1, True), ("train.log_every", 1, True), ("train.save_every", 0, True),
    ("train.eval_every", 0, True), ("train.global_batch", 0, True), ("train.warmup_steps", 0, True),
    ("train.lr", 0.0, False), ("train.encoder_lr", 0.0, True), ("train.weight_decay", 0.0, True),
    ("train.clip", 0.0, True), ("data.num_workers", 0, True), ("data.shuffle_buffer", 0, True),
    ("data.frame_width", 0, True), ("data.frame_height", 0, True), ("triplet.knn", 1, True),
    ("triplet.max_triplets", 1, True), ("triplet.margin", 0.0, True), ("train.max_skips_in_row", 1, True),
    ("train.peak_tflops", 0.0, True),
)


def check_ranges(cfg: RunConfig | ExtractConfig, ranges: tuple[tuple[str, float, bool], ...] = RANGES) -> None:
    for key, low, inclusive in ranges:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if isinstance(value, float) and not math.isfinite(value):  # nan passes every comparison below
            raise ConfigError(f"{key} must be a finite number, not {value}")
        if value < low or (value == low and not inclusive):
            bound = f">= {low}" if inclusive else f"> {low}"
            raise ConfigError(f"{key} must be {bound}, not {value}")


def read_policy(cfg: RunConfig | ExtractConfig, skip_log: str | None = None) -> Any:
    """The loaders' :class:`~m2fdist.format.source.ReadPolicy` from ``data.*``; ConfigError if out of range."""
    d = cfg.data
    try:
        return ReadPolicy(max_member_mb=d.max_member_mb, allow_compressed=d.allow_compressed,
                          max_clip_mpixels=d.max_clip_mpixels, max_audio_seconds=d.max_audio_seconds,
                          train_bad_shards=getattr(d, "train_bad_shards", "error"), skip_log=skip_log,
                          s3_command=d.s3_command,
                          gs_command=d.gs_command)
    except ValueError as e:
        raise ConfigError(f"data.{e}") from None


def check_shards(cfg: RunConfig | ExtractConfig) -> dict[str, Any]:
    """``data.shards`` is an allowed location whose index.json is for ``dataset`` (name and labels).

    Run before any process group starts, so a config pointed at the wrong corpus fails at once, not after
    a launch (or worse, trains with the other corpus's label ids). Returns the index, for further checks
    against what the shards hold.
    """
    shards = cfg.data.shards
    if not scheme_of(shards) and not Path(shards).expanduser().is_dir():
        raise ConfigError(f"data.shards={shards}: no such folder")
    try:
        source = ShardSource(shards, read_policy(cfg))
        index = load_index(source)
    except FileNotFoundError:
        raise ConfigError(f"data.shards={shards}: no index.json there (pack the corpus, or for the "
                          "fusion stage run `m2fdist extract`, first)") from None
    except (ShardError, ValueError) as e:
        raise ConfigError(f"data.shards={cfg.data.shards}: {e}") from None
    resolve_labels(cfg, index, source.url("index.json"))
    return index


def resolve_labels(cfg: RunConfig | ExtractConfig, index: dict[str, Any], where: str) -> None:
    """The run's labels from the shards' index.json (``label_names``): the one source of a run's label set.

    MELD's and IEMOCAP's shards must name their corpus's fixed set; a manifest corpus's set is its own. ``labels``
    unset takes them; given, it must equal them.
    """
    fixed = LABELS.get(cfg.dataset)
    try:
        names = check_label_names(index.get("label_names"), f"{where}:")
    except ValueError as e:
        raise ConfigError(f"data.shards={cfg.data.shards}: {e}") from None
    if index.get("dataset") != cfg.dataset or (fixed is not None and names != list(fixed)):
        mine = f" (labels {', '.join(fixed)})" if fixed else ""
        raise ConfigError(f"dataset={cfg.dataset}{mine}, but {where} is for {index.get('dataset')!r} with labels "
                          f"{names}: set dataset= to match the shards, or point data.shards at the right ones")
    if cfg.labels and list(cfg.labels) != names:
        raise ConfigError(f"labels={list(cfg.labels)}, but {where} names {names}: leave labels unset (the run takes "
                          "the shards' own), or point data.shards at the right ones")
    if isinstance(cfg, RunConfig):
        cfg.use_labels(names)
        _check_loss(cfg)
    else:
        cfg.labels = names
