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


@dataclass
class ExtractConfig:
    text: str = ""  # exported text model folder (m2fdist export); "" leaves the modality out
    audio: str = ""
    visual: str = ""
    out: str = "shards/meld_features"
    splits: list[str] = field(default_factory=lambda: ["train", "dev", "test"])


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
    deepspeed: str = "configs/ds/zero2.json"
    precision: str = ""  # "": as the DeepSpeed JSON says; else bf16, fp16 or fp32
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
    if cfg.precision not in ("", "bf16", "fp16", "fp32"):
        raise ConfigError(f"precision must be bf16, fp16 or fp32, not {cfg.precision!r}")
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
    t = cfg.train
    if t.max_steps < 0 or t.epochs < 1 or t.grad_accum < 1 or t.keep_last < 1:
        raise ConfigError("train.max_steps >= 0, train.epochs >= 1, train.grad_accum >= 1, train.keep_last >= 1")
    check_shards(cfg)


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


def deepspeed_config(cfg: RunConfig, world_size: int, device: str | None = None) -> dict[str, Any]:
    """The DeepSpeed JSON with batch sizes, clipping and precision filled in from the run config.

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
    if cfg.precision:
        ds["bf16"] = {"enabled": cfg.precision == "bf16"}
        ds["fp16"] = {"enabled": cfg.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16,
                      "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}
    device = device or device_kind()
    if ds.get("fp16", {}).get("enabled") and device == "cpu":
        raise ConfigError("fp16 needs a GPU; on CPU use precision=bf16 or precision=fp32")
    return ds


def precision_of(ds: dict[str, Any]) -> str:
    if ds.get("bf16", {}).get("enabled"):
        return "bf16"
    return "fp16" if ds.get("fp16", {}).get("enabled") else "fp32"
