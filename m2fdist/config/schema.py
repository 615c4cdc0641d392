"""The run configurations as typed dataclasses: every key, its type, default and (as its comment) its description.

Two schemas: :class:`RunConfig` for a training stage (``m2fdist train``) and :class:`ExtractConfig` for feature
extraction (``m2fdist extract``). Every field's comment is its description in ``--help`` and in the generated
config reference (:mod:`m2fdist.config.help`). Values the data already knows are read from it, not copied by
hand: the fusion stage's feature widths (``fusion.dim_*``, 0 = unset) from the features' ``index.json``,
extraction's frame count (``data.num_frames``, 0 = unset) from the visual export.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from m2fdist.common.labels import run_labels
from m2fdist.models.audio import AudioConfig
from m2fdist.models.dialog import DialogConfig
from m2fdist.models.text_config import TextConfig
from m2fdist.models.visual import VisualConfig

# precision=: what a run may ask for (runtime.precision resolves it against the device and the DeepSpeed JSON).
PRECISIONS = ("auto", "json", "bf16", "fp16", "fp32")


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
    # Signals on which the run saves a checkpoint at the next step and exits with code 75 (resume=auto goes on
    # from there): SLURM sends SIGTERM at scancel, time limit and preemption, and what --signal names before.
    stop_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    requeue: str = "auto"  # auto: under SLURM, rank 0 requeues the job when a signal stops it; never: it does not
    # A step whose loss or gradient norm is NaN or infinite: "stop" ends the run there with an error naming the
    # step; "skip" leaves the weights, optimizer state and learning-rate schedule as they were (DeepSpeed's own
    # skip, as for an fp16 overflow), counts the step (metrics.jsonl, final.json) and trains on. fp16's loss-scale
    # overflows are its loss scaler's business under either. skip needs ZeRO 1-3, bf16 or fp16 (ZeRO-0 fp32 applies
    # every step).
    nonfinite: str = "stop"
    max_skips_in_row: int = 3  # with nonfinite=skip: one more non-finite step in a row than this stops the run
    # The device's dense peak TFLOP/s that MFU is taken against. 0: the datasheet table of known GPUs (H100, H200,
    # A100, ...; bf16 and fp16), and on a CPU a short matmul probe measured at start (logs name which).
    peak_tflops: float = 0.0


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
    # its own it barely separates emotions; the demo's audio stage leans on this term instead (docs/models.md).
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
    # meld, iemocap, or manifest (any labelled dialogs: m2fdist pack manifest); checked against the shards' index.json
    dataset: str = "meld"
    # The class names in id order. [] (unset) takes the shards' index.json label_names, the one place a run's labels
    # come from (through them: the outputs, class weights, export, model card, report, predict); a list given must
    # equal them
    labels: list[str] = field(default_factory=list)
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
    def label_names(self) -> list[str]:
        """The run's class names in id order (:func:`~m2fdist.common.labels.run_labels`); [] while a manifest
        run's config has not been checked against its shards."""
        return run_labels(self.dataset, self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def use_labels(self, names: list[str]) -> None:
        """Take ``names`` as the run's labels; the classifier heads (text, fusion) follow their count."""
        self.labels = list(names)
        self.text.num_classes = self.fusion.num_classes = len(names)

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
    dataset: str = "meld"  # meld, iemocap or manifest: checked against the shards' index.json
    # The class names in id order; [] (unset) takes the shards' index.json label_names, a list given must equal them
    labels: list[str] = field(default_factory=list)
    data: ExtractDataConfig = field(default_factory=ExtractDataConfig)
    extract: ExtractModels = field(default_factory=ExtractModels)
    visual: ExtractFaces = field(default_factory=ExtractFaces)

    @property
    def label_names(self) -> list[str]:
        return run_labels(self.dataset, self.labels)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
