"""Run configuration: typed dataclasses, a YAML file, ``key=value`` overrides (the form W&B sweeps pass).

Everything that can be wrong with a configuration is found here, on every rank identically, before any
process group starts: an unknown key, a wrong type, a batch size that does not divide, a precision the
device cannot do, a DeepSpeed JSON with ``"auto"`` values (only the HF Trainer fills those in).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from m2fdist.labels import LABELS
from m2fdist.models.audio import AudioConfig
from m2fdist.models.dialog import DialogConfig
from m2fdist.models.text import TextConfig
from m2fdist.models.visual import VisualConfig
from m2fdist.precision import CHOICES as PRECISIONS
from m2fdist.precision import Precision, device_native_bf16
from m2fdist.precision import resolve as resolve_precision

STAGES = ("text", "audio", "visual", "fusion", "extract")


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the config."""


@dataclass
class DataConfig:
    shards: str = "shards/meld"  # utterance shards; for the fusion stage, dialog feature shards
    batch_size: int = 8  # micro batch per rank (dialogs for fusion, utterances otherwise)
    num_workers: int = 2
    num_frames: int = 15  # paper: 15 frames per utterance
    frame_width: int = 0  # 0 keeps the packed size
    frame_height: int = 0
    shuffle_buffer: int = 64
    train_split: str = "train"
    eval_splits: list[str] = field(default_factory=lambda: ["dev", "test"])
    # Shards are untrusted: bounds on what one may make a reader do (see m2fdist.data.source.ReadPolicy).
    max_member_mb: float = 64.0
    allow_compressed: bool = False
    max_clip_mpixels: float = 4000.0
    max_audio_seconds: float = 120.0
    train_bad_shards: str = "error"  # or "skip": record a truncated/miscounted shard and go on (eval: error)
    s3_command: str = "aws s3 cp {url} -"  # argv template for s3:// shards, run without a shell
    gs_command: str = "gcloud storage cat {url}"


@dataclass
class TrainConfig:
    max_steps: int = 0  # optimizer steps; 0 runs `epochs` epochs
    epochs: int = 1
    save_every: int = 0  # steps between checkpoints (and at every epoch end); 0: epoch ends only
    eval_every: int = 0  # steps between dev/test evaluations (and at every epoch end)
    log_every: int = 10
    keep_last: int = 2  # checkpoints kept besides the best one
    grad_accum: int = 1
    global_batch: int = 0  # if set, grad_accum = global_batch / (batch_size × world size), which must divide
    lr: float = 5e-4  # new layers: heads, extractors, fusion
    encoder_lr: float = 1e-5  # pretrained encoders (RoBERTa)
    weight_decay: float = 5e-4
    warmup_steps: int = 0
    clip: float = 1.0
    seed: int = 0
    # Classifier stages (text, fusion): "none", "inverse" or "sqrt_inverse" frequency of the training split's
    # labels (from index.json), or a list of one weight per class; focal_gamma > 0 adds the focal term.
    class_weights: Any = "none"
    focal_gamma: float = 0.0


# triplet.recipe → (weights of L_AMT, L_Cov, L_Var; weight of the cross-entropy head)
RECIPES = {"paper": ([20.0, 5.0, 1.0], 0.0), "vicreg_ce": ([0.0, 5.0, 1.0], 1.0)}


@dataclass
class TripletConfig:
    mining: str = "all"  # or "semihard"
    max_triplets: int = 1024
    margin: float = 1.0  # semi-hard window
    weights: list[float] = field(default_factory=lambda: [20.0, 5.0, 1.0])  # L_AMT, L_Cov, L_Var (paper)
    knn: int = 5  # evaluation: leave-one-out k-NN over the split's embeddings
    # Ours, not the paper's: weight of a cross-entropy term from a linear head on each embedding (scaled by
    # 1/ce_temperature, since the embeddings are unit vectors). 0 (the default) is the paper's loss. The
    # printed L_AMT's stationary point puts negatives (D ≈ 0.48) no farther than positives (D ≈ 0.52), so on
    # its own it barely separates emotions; the demo's audio stage leans on this term instead (README).
    ce_weight: float = 0.0
    ce_temperature: float = 0.1
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
class ExtractConfig:
    text: str = ""  # exported text model folder (m2fdist export); "" leaves the modality out
    audio: str = ""
    visual: str = ""
    out: str = "shards/meld_features"
    splits: list[str] = field(default_factory=lambda: ["train", "dev", "test"])
    # Utterances decoded and run through the extractors at once, whatever the dialog's length: a rank holds
    # at most (data.num_workers × 2 + 1) such chunks of frames and audio (m2fdist.data.chunks).
    chunk_utterances: int = 32


@dataclass
class WandbConfig:
    mode: str = "offline"  # online, offline or disabled
    project: str = "m2fdist"
    entity: str | None = None
    name: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    stage: str = "text"
    dataset: str = "meld"
    output_dir: str = "runs/meld/text"
    resume: str = ""  # "": start fresh; auto: latest checkpoint if any; or a tag / checkpoint path
    # resume: also accept config changes that break an exact resume (model shape, batch, precision, ...)
    allow_config_change: bool = False
    deepspeed: str = "configs/ds/zero2.json"
    # auto: bf16 where the device computes it natively (CUDA with bf16, CPUs with AVX512-BF16/AMX), fp32 elsewhere,
    # fp16 only where a GPU run's DeepSpeed JSON asks for it; json: as the DeepSpeed JSON says; or bf16/fp16/fp32
    precision: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    text: TextConfig = field(default_factory=TextConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    visual: VisualConfig = field(default_factory=VisualConfig)
    fusion: DialogConfig = field(default_factory=DialogConfig)
    triplet: TripletConfig = field(default_factory=TripletConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    @property
    def num_classes(self) -> int:
        return len(LABELS[self.dataset])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Schema ← YAML file ← ``key=value`` overrides, checked and turned into a :class:`RunConfig`."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad}")
    try:
        merged = OmegaConf.structured(RunConfig)
        if path is not None:
            if not Path(path).is_file():
                raise ConfigError(f"config file {path} not found")
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        cfg: RunConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        where = f"{path or 'config'}" + (f", key {key}" if key else "")
        raise ConfigError(f"{where}: {str(e).splitlines()[0]}") from None
    except ValueError as e:  # a sub-config's own check (e.g. fusion.modalities)
        raise ConfigError(str(e).splitlines()[0]) from None
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
    if cfg.extract.chunk_utterances < 1:
        raise ConfigError("extract.chunk_utterances must be >= 1")
    check_ranges(cfg)
    _check_loss(cfg)
    index = check_shards(cfg)
    if index is not None and cfg.stage in ("audio", "visual"):
        from m2fdist.pack.index import packed_modalities

        if cfg.stage not in packed_modalities(index):
            raise ConfigError(f"data.shards={cfg.data.shards} holds text-only samples (packed with --modalities "
                              f"text): the {cfg.stage} stage needs shards packed with media")


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


def check_ranges(cfg: RunConfig) -> None:
    for key, low, inclusive in RANGES:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value < low or (value == low and not inclusive):
            bound = f">= {low}" if inclusive else f"> {low}"
            raise ConfigError(f"{key} must be {bound}, not {value}")


def read_policy(cfg: RunConfig, skip_log: str | None = None) -> Any:
    """The loaders' :class:`~m2fdist.data.source.ReadPolicy` from ``data.*``; ConfigError if out of range."""
    from m2fdist.data.source import ReadPolicy

    d = cfg.data
    try:
        return ReadPolicy(max_member_mb=d.max_member_mb, allow_compressed=d.allow_compressed,
                          max_clip_mpixels=d.max_clip_mpixels, max_audio_seconds=d.max_audio_seconds,
                          train_bad_shards=d.train_bad_shards, skip_log=skip_log, s3_command=d.s3_command,
                          gs_command=d.gs_command)
    except ValueError as e:
        raise ConfigError(f"data.{e}") from None


def check_shards(cfg: RunConfig) -> dict[str, Any] | None:
    """``data.shards`` is an allowed location whose index.json is for ``dataset`` (name and labels).

    Run before any process group starts, so a config pointed at the wrong corpus fails at once, not after
    a launch (or worse, trains with the other corpus's label ids). Returns the index (None for an extract
    config whose shards are not packed yet), for further checks against what the shards hold.
    """
    from m2fdist.data.source import ShardError, ShardSource
    from m2fdist.pack.index import load_index

    try:
        source = ShardSource(cfg.data.shards, read_policy(cfg))
        index = load_index(source)
    except FileNotFoundError:
        if cfg.stage == "extract":
            return None  # extraction says so itself
        raise ConfigError(f"data.shards={cfg.data.shards}: no index.json there (pack the corpus, or for the "
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
