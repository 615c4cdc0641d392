"""Run configuration: typed dataclasses, a YAML file, ``key=value`` overrides (the form W&B sweeps pass).

Two config types: :class:`RunConfig` for a training stage (``m2fdist train``) and :class:`ExtractConfig` for
feature extraction (``m2fdist extract``). Every field's comment is its description in ``--help``
(:mod:`m2fdist.confighelp`). Values the data already knows are read from it, not copied by hand: the fusion
stage's feature widths (``fusion.dim_*``, 0 = unset) from the features' ``index.json``, extraction's frame
count (``data.num_frames``, 0 = unset) from the visual export; a value given that disagrees is an error.

Everything that can be wrong with a configuration is found here, on every rank identically, before any
process group starts: an unknown key, a wrong type, a missing shards folder or local model path, a batch size
that does not divide, a precision the device cannot do, a DeepSpeed JSON with ``"auto"`` values (only the
HF Trainer fills those in).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from m2fdist.labels import LABELS
from m2fdist.modalities import BY_LETTER, MODALITIES
from m2fdist.models.audio import AudioConfig
from m2fdist.models.dialog import DialogConfig
from m2fdist.models.text import TextConfig
from m2fdist.models.visual import VisualConfig
from m2fdist.precision import CHOICES as PRECISIONS
from m2fdist.precision import Precision, device_native_bf16
from m2fdist.precision import resolve as resolve_precision

STAGES = ("text", "audio", "visual", "fusion")


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the config."""


@dataclass
class ShardsConfig:
    """Where samples come from and how they are decoded: what training and extraction share."""

    shards: str = "shards/meld"  # utterance shards; for the fusion stage, dialog feature shards
    num_workers: int = 2  # loader worker processes per rank
    num_frames: int = 15  # video frames sampled per utterance (paper: 15)
    frame_width: int = 0  # frames resized to this width; 0 keeps the packed size
    frame_height: int = 0  # frames resized to this height; 0 keeps the packed size
    # Shards are untrusted: bounds on what one may make a reader do. Largest member (MB) a sample may hold.
    max_member_mb: float = 64.0
    allow_compressed: bool = False  # accept gzip / bz2 / xz compressed tars (off: a compressed tar is refused)
    max_clip_mpixels: float = 4000.0  # a clip's frames × height × width, in millions (60 s of 1080p30 ≈ 3700)
    max_audio_seconds: float = 120.0  # longest audio member a sample may hold, in seconds
    s3_command: str = "aws s3 cp {url} -"  # argv template for s3:// shards, run without a shell
    gs_command: str = "gcloud storage cat {url}"  # argv template for gs:// shards, run without a shell


@dataclass
class DataConfig(ShardsConfig):
    batch_size: int = 8  # micro batch per rank (dialogs for fusion, utterances otherwise)
    shuffle_buffer: int = 64  # samples shuffled together in the training stream
    train_split: str = "train"  # split the stage trains on
    eval_splits: list[str] = field(default_factory=lambda: ["dev", "test"])  # splits scored at each evaluation
    train_bad_shards: str = "error"  # or "skip": record a truncated/miscounted shard and go on (eval: error)


@dataclass
class TrainConfig:
    max_steps: int = 0  # optimizer steps; 0 runs `epochs` epochs
    epochs: int = 1  # passes over the training split (when max_steps is 0)
    save_every: int = 0  # steps between checkpoints (and at every epoch end); 0: epoch ends only
    eval_every: int = 0  # steps between dev/test evaluations (and at every epoch end)
    log_every: int = 10  # steps between training log lines (metrics.jsonl, W&B)
    keep_last: int = 2  # checkpoints kept besides the best one
    grad_accum: int = 1  # micro batches per optimizer step
    global_batch: int = 0  # if set, grad_accum = global_batch / (batch_size × world size), which must divide
    lr: float = 5e-4  # new layers: heads, extractors, fusion
    encoder_lr: float = 1e-5  # pretrained encoders (RoBERTa)
    weight_decay: float = 5e-4  # AdamW's (not applied to biases and norms)
    warmup_steps: int = 0  # linear warmup steps, then linear decay to zero at the last step
    clip: float = 1.0  # gradient norm clipping (0: none)
    seed: int = 0  # seeds model init, data order and augmentation
    # Classifier stages (text, fusion): "none", "inverse" or "sqrt_inverse" frequency of the training split's
    # labels (from index.json), or a list of one weight per class; focal_gamma > 0 adds the focal term.
    class_weights: Any = "none"
    focal_gamma: float = 0.0  # > 0 adds the focal term (1 - p)^gamma to the classification loss


# triplet.recipe → (weights of L_AMT, L_Cov, L_Var; weight of the cross-entropy head)
RECIPES = {"paper": ([20.0, 5.0, 1.0], 0.0), "vicreg_ce": ([0.0, 5.0, 1.0], 1.0)}


@dataclass
class TripletConfig:
    mining: str = "all"  # or "semihard"
    max_triplets: int = 1024  # triplets mined per batch at most
    margin: float = 1.0  # semi-hard window
    weights: list[float] = field(default_factory=lambda: [20.0, 5.0, 1.0])  # L_AMT, L_Cov, L_Var (paper)
    knn: int = 5  # evaluation: leave-one-out k-NN over the split's embeddings
    # Ours, not the paper's: weight of a cross-entropy term from a linear head on each embedding (scaled by
    # 1/ce_temperature, since the embeddings are unit vectors). 0 (the default) is the paper's loss. The
    # printed L_AMT's stationary point puts negatives (D ≈ 0.48) no farther than positives (D ≈ 0.52), so on
    # its own it barely separates emotions; the demo's audio stage leans on this term instead (README).
    ce_weight: float = 0.0
    ce_temperature: float = 0.1  # the CE head's logits are divided by this
    # A named loss, one switch: "paper" (weights 20, 5, 1, no CE head: the printed loss), "vicreg_ce" (weights
    # 0, 5, 1 and the CE head at 1: the recipe that learns, configs/meld and configs/iemocap), or "custom"
    # (weights and ce_weight as given). A named recipe sets both; giving them other values is an error.
    recipe: str = "custom"

    def __post_init__(self) -> None:
        if self.recipe == "custom":
            return
        if self.recipe not in RECIPES:
            raise ValueError(f"triplet.recipe must be custom, {' or '.join(RECIPES)}, not {self.recipe!r}")
        weights, ce = RECIPES[self.recipe]
        for given, allowed in ((list(self.weights), ([20.0, 5.0, 1.0], weights)), (self.ce_weight, (0.0, ce))):
            if given not in allowed:  # the defaults, or the recipe's own values (a saved config)
                raise ValueError(f"triplet.recipe={self.recipe} sets triplet.weights and triplet.ce_weight; "
                                 "use triplet.recipe=custom to choose them")
        self.weights, self.ce_weight = list(weights), ce


@dataclass
class WandbConfig:
    mode: str = "offline"  # online, offline or disabled
    project: str = "m2fdist"  # W&B project
    entity: str | None = None  # W&B team or user (null: your default)
    name: str | None = None  # run name (null: W&B picks one)
    group: str | None = None  # run group, e.g. a sweep or an ablation table
    tags: list[str] = field(default_factory=list)  # run tags


def _unset_dims() -> DialogConfig:
    """The fusion section of a run config: feature widths 0, read from the features' index.json."""
    return DialogConfig(dim_text=0, dim_audio=0, dim_visual=0)


@dataclass
class RunConfig:
    stage: str = "text"  # text, audio, visual or fusion
    dataset: str = "meld"  # meld or iemocap: the label set, checked against the shards' index.json
    output_dir: str = "runs/meld/text"  # checkpoints, metrics.jsonl, config.json, final.json
    resume: str = ""  # "": start fresh; auto: latest checkpoint if any; or a tag / checkpoint path
    # resume: also accept config changes that break an exact resume (model shape, batch, precision, ...)
    allow_config_change: bool = False
    deepspeed: str = "configs/ds/zero2.json"  # DeepSpeed JSON (ZeRO stage, offload); batch sizes are filled in
    # auto: bf16 where the device computes it natively (CUDA with bf16, CPUs with AVX512-BF16/AMX), fp32 elsewhere,
    # fp16 only where a GPU run's DeepSpeed JSON asks for it; json: as the DeepSpeed JSON says; or bf16/fp16/fp32
    precision: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    text: TextConfig = field(default_factory=TextConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    visual: VisualConfig = field(default_factory=VisualConfig)
    fusion: DialogConfig = field(default_factory=_unset_dims)
    triplet: TripletConfig = field(default_factory=TripletConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    @property
    def num_classes(self) -> int:
        return len(LABELS[self.dataset])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExtractDataConfig(ShardsConfig):
    # Frames per utterance the visual extractor sees: 0 (unset) takes the visual export's own data.num_frames,
    # what it was trained with; another value must equal that.
    num_frames: int = 0


@dataclass
class ExtractModels:
    text: str = ""  # exported text model folder (m2fdist export); "" leaves the modality out
    audio: str = ""  # exported audio extractor folder; "" leaves the modality out
    visual: str = ""  # exported visual extractor folder; "" leaves the modality out
    out: str = "shards/meld_features"  # folder the dialog feature shards and their index.json are written to
    splits: list[str] = field(default_factory=lambda: ["train", "dev", "test"])  # splits extracted (if packed)
    # Utterances decoded and run through the extractors at once, whatever the dialog's length: a rank holds
    # at most (data.num_workers × 4 + 1) such chunks of frames and audio (m2fdist.data.chunks).
    chunk_utterances: int = 32


@dataclass
class ExtractFaces:
    # Face boxes for the visual extractor: auto (those `m2fdist faces` stored beside the shards when they match,
    # MTCNN otherwise), mtcnn (MTCNN on every chunk), or a face-set folder that must cover the shards.
    faces: str = "auto"


@dataclass
class ExtractConfig:
    """``m2fdist extract``: the exported text / audio / visual models over utterance shards → dialog features."""

    dataset: str = "meld"  # meld or iemocap: the label set, checked against the shards' index.json
    data: ExtractDataConfig = field(default_factory=ExtractDataConfig)
    extract: ExtractModels = field(default_factory=ExtractModels)
    visual: ExtractFaces = field(default_factory=ExtractFaces)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


EXTRACT_RANGES = (("data.num_workers", 0, True), ("data.num_frames", 0, True), ("data.frame_width", 0, True),
                  ("data.frame_height", 0, True), ("extract.chunk_utterances", 1, True))


def load_extract_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> ExtractConfig:
    """An extraction config, checked against the shards and the exports, ``data.num_frames`` resolved.

    Older extract YAMLs carry ``stage: extract`` and an ``output_dir``; both are accepted and dropped.
    """
    cfg: ExtractConfig = _merge(ExtractConfig, path, overrides, legacy={"stage": "extract", "output_dir": None})
    check_extract_config(cfg)
    return cfg


def check_extract_config(cfg: ExtractConfig) -> None:
    from m2fdist.modalities import NAMES
    from m2fdist.pack.index import packed_modalities

    if cfg.dataset not in LABELS:
        raise ConfigError(f"dataset must be one of {sorted(LABELS)}, not {cfg.dataset!r}")
    check_ranges(cfg, EXTRACT_RANGES)
    index = check_shards(cfg)
    if index.get("kind") == "features":
        raise ConfigError(f"data.shards={cfg.data.shards} holds dialog features: extraction reads the utterance "
                          "shards `m2fdist pack` writes")
    exports = {name: getattr(cfg.extract, name) for name in NAMES if getattr(cfg.extract, name)}
    if not exports:
        raise ConfigError("extract.text / extract.audio / extract.visual: give at least one exported model")
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
    """The run config an export folder was trained with (its config.json, JSON only), or a ConfigError."""
    folder = Path(path).expanduser()
    if not (folder / "model.safetensors").is_file():
        raise ConfigError(f"{key}={path}: no exported model there (run `m2fdist export RUN`)")
    try:
        return json.loads((folder / "config.json").read_text())["run"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{key}={path}: its config.json is missing or not an export's") from None


def _merge(schema: type, path: str | Path | None, overrides: list[str] | tuple[str, ...],
           legacy: dict[str, str | None] | None = None) -> Any:
    """Schema ← YAML file ← ``key=value`` overrides, turned into an instance of ``schema``.

    ``legacy`` names top-level YAML keys that older files carry and this schema drops (key → the one value
    dropped, None for any value); another value stays and is reported as an unknown key.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad}")
    try:
        merged = OmegaConf.structured(schema)
        if path is not None:
            if not Path(path).is_file():
                raise ConfigError(f"config file {path} not found")
            loaded = OmegaConf.load(path)
            _check_kind(schema, path, loaded, legacy or {})
            merged = OmegaConf.merge(merged, loaded)
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        where = f"{path or 'config'}" + (f", key {key}" if key else "")
        raise ConfigError(f"{where}: {str(e).splitlines()[0]}") from None
    except ValueError as e:  # a sub-config's own check (e.g. fusion.modalities)
        raise ConfigError(str(e).splitlines()[0]) from None


def _check_kind(schema: type, path: str | Path, loaded: Any, legacy: dict[str, str | None]) -> None:
    """A training config given to extraction or the other way round: say so, not "unknown key"."""
    from omegaconf import DictConfig

    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: not a mapping of config keys")
    stage = loaded.get("stage")
    if schema is RunConfig and (stage == "extract" or "extract" in loaded):
        raise ConfigError(f"{path} is an extraction config: run it with `m2fdist extract` / launch/extract.py")
    if schema is ExtractConfig and stage is not None and stage != "extract":
        raise ConfigError(f"{path} is a {stage} training config: extraction takes an extract config "
                          "(configs/<dataset>/extract.yaml)")
    for key, accepted in legacy.items():
        if key in loaded and accepted in (None, loaded[key]):
            del loaded[key]


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A training stage's config: schema ← YAML file ← ``key=value`` overrides ← what the data knows, checked.

    The fusion stage's unset feature widths (``fusion.dim_* = 0``) are read from the features' index.json.
    """
    cfg: RunConfig = _merge(RunConfig, path, overrides)
    # keep the model configs consistent with the dataset
    cfg.text.num_classes = cfg.fusion.num_classes = cfg.num_classes
    check_config(cfg)
    return cfg


def check_config(cfg: RunConfig) -> None:
    if cfg.stage not in STAGES:
        raise ConfigError(f"stage must be one of {STAGES}, not {cfg.stage!r}")
    if cfg.dataset not in LABELS:
        raise ConfigError(f"dataset must be one of {sorted(LABELS)}, not {cfg.dataset!r}")
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
    check_ranges(cfg)
    _check_loss(cfg)
    index = check_shards(cfg)
    if cfg.stage in ("audio", "visual"):
        from m2fdist.pack.index import packed_modalities

        if cfg.stage not in packed_modalities(index):
            raise ConfigError(f"data.shards={cfg.data.shards} holds text-only samples (packed with --modalities "
                              f"text): the {cfg.stage} stage needs shards packed with media")
    if cfg.stage == "fusion":
        resolve_feature_dims(cfg, index)
    elif index.get("kind") == "features":
        raise ConfigError(f"data.shards={cfg.data.shards} holds dialog features (m2fdist extract): the "
                          f"{cfg.stage} stage reads utterance shards (m2fdist pack)")


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


def looks_local(value: str) -> bool:
    """Whether a model name is meant as a local path rather than a hub id (``org/name``).

    A path: it exists, starts with ``/``, ``./``, ``../`` or ``~``, or has more than one ``/`` (a hub id has
    at most one). ``runs/roberta`` that does not exist is read as a hub id, as transformers reads it.
    """
    return (Path(value).expanduser().exists() or value.startswith(("/", "./", "../", "~"))
            or value.count("/") > 1)


def check_model_paths(cfg: RunConfig) -> None:
    """Local model paths the stage will load exist: a typo fails here, not after the launch.

    Called by the entry point (``m2fdist train``) before anything starts, not by :func:`load_config`, so a
    config can be loaded and inspected on a machine that does not hold the model.
    """
    if cfg.stage == "text" and looks_local(cfg.text.model) and not Path(cfg.text.model).expanduser().exists():
        raise ConfigError(f"text.model={cfg.text.model}: no such local model folder (a hub model is named org/name)")
    if cfg.stage == "visual":
        from m2fdist.models.visual import WEIGHT_FILES

        for key in ("face_init", "scene_init"):
            value = getattr(cfg.visual, key)
            if value.endswith(WEIGHT_FILES) and not Path(value).expanduser().is_file():
                raise ConfigError(f"visual.{key}={value}: no such weights file")


def _check_loss(cfg: RunConfig) -> None:
    """train.class_weights and train.focal_gamma, checked with the label counts they will be built from."""
    from m2fdist.losses import class_weights

    t = cfg.train
    if t.focal_gamma < 0:
        raise ConfigError(f"train.focal_gamma must be >= 0, not {t.focal_gamma}")
    spec = t.class_weights
    if not isinstance(spec, str | list) or (isinstance(spec, list) and not all(
            isinstance(w, int | float) and not isinstance(w, bool) for w in spec)):
        raise ConfigError(f"train.class_weights must be none, inverse, sqrt_inverse or a list of numbers, not {spec!r}")
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
    ("triplet.max_triplets", 1, True), ("triplet.margin", 0.0, True),
)


def check_ranges(cfg: RunConfig | ExtractConfig, ranges: tuple[tuple[str, float, bool], ...] = RANGES) -> None:
    for key, low, inclusive in ranges:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value < low or (value == low and not inclusive):
            bound = f">= {low}" if inclusive else f"> {low}"
            raise ConfigError(f"{key} must be {bound}, not {value}")


def read_policy(cfg: RunConfig | ExtractConfig, skip_log: str | None = None) -> Any:
    """The loaders' :class:`~m2fdist.data.source.ReadPolicy` from ``data.*``; ConfigError if out of range."""
    from m2fdist.data.source import ReadPolicy

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
    from m2fdist.data.source import ShardError, ShardSource, scheme_of
    from m2fdist.pack.index import load_index

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
    names = list(LABELS[cfg.dataset])
    if index.get("dataset") != cfg.dataset or index.get("label_names") != names:
        raise ConfigError(f"dataset={cfg.dataset} (labels {', '.join(names)}), but {source.url('index.json')} "
                          f"is for {index.get('dataset')!r} with labels {index.get('label_names')}: "
                          "set dataset= to match the shards, or point data.shards at the right ones")
    return index


def device_kind() -> str:
    """'cuda', 'cpu', ...: DeepSpeed's accelerator, which DS_ACCELERATOR=cpu forces to the CPU."""
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name()


def deepspeed_config(cfg: RunConfig, world_size: int, device: str | None = None,
                     native_bf16: bool | None = None) -> tuple[dict[str, Any], Precision]:
    """The DeepSpeed JSON with batch sizes, clipping and precision filled in from the run config, and the
    precision chosen (``native_bf16`` overrides the hardware probe, for tests).

    Under ``accelerate launch`` the JSON named by its config (ACCELERATE_DEEPSPEED_CONFIG_FILE) is used,
    so both launchers read the same files in configs/ds/.
    """
    path = Path(os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or cfg.deepspeed)
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config {path} not found")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not JSON ({e})") from None
    if '"auto"' in json.dumps(ds):
        raise ConfigError(f"{path}: \"auto\" values are filled in only by the HF Trainer; give numbers")
    micro, accum = cfg.data.batch_size, cfg.train.grad_accum
    if cfg.train.global_batch:
        if cfg.train.global_batch % (micro * world_size):
            raise ConfigError(
                f"train.global_batch={cfg.train.global_batch} is not a multiple of data.batch_size={micro} × "
                f"world size {world_size}"
            )
        accum = cfg.train.global_batch // (micro * world_size)
    ds["train_micro_batch_size_per_gpu"] = micro
    ds["gradient_accumulation_steps"] = accum
    ds["train_batch_size"] = micro * accum * world_size
    ds["gradient_clipping"] = cfg.train.clip
    ds.setdefault("steps_per_print", 10**9)
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise ConfigError(f"{path}: remove \"{key}\": m2fdist builds AdamW with per-group learning rates "
                              "and its warmup + decay schedule from train.* itself")
    device = device or device_kind()
    native = device_native_bf16(device) if native_bf16 is None and cfg.precision == "auto" else bool(native_bf16)
    chosen = resolve_precision(cfg.precision, precision_of(ds), device, native)
    if chosen.dtype == "fp16" and device == "cpu":
        raise ConfigError("fp16 needs a GPU; on CPU use precision=auto, bf16 or fp32")
    fp16 = {**ds.get("fp16", {}), "enabled": chosen.dtype == "fp16"}
    for key, value in {"loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000, "hysteresis": 2,
                       "min_loss_scale": 1}.items():
        fp16.setdefault(key, value)
    ds["fp16"] = fp16
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": chosen.dtype == "bf16"}
    return ds, chosen


def precision_of(ds: dict[str, Any]) -> str:
    if ds.get("bf16", {}).get("enabled"):
        return "bf16"
    return "fp16" if ds.get("fp16", {}).get("enabled") else "fp32"
