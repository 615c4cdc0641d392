"""The stage interface: what the generic DeepSpeed loop in :mod:`m2fdist.training.trainer` needs from a stage.

A stage builds its model and optimiser parameter groups, its loaders, the loss of one batch, and its
evaluation outputs. Classifier stages (text, fusion) predict labels; extractor stages (audio, visual)
return embeddings, scored by leave-one-out k-NN so their dev F1 can pick the best checkpoint too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from m2fdist.common.modalities import NAMES, members_for
from m2fdist.config.checks import read_policy
from m2fdist.config.schema import RunConfig
from m2fdist.data import LoaderConfig, make_loader
from m2fdist.data.collate import IGNORE_INDEX
from m2fdist.format.index import load_index
from m2fdist.models.losses import class_weights, classification_loss

NO_DECAY = ("bias", "norm", "LayerNorm", "layer_norm", "bn")


class Stage:
    name = "base"
    level = "utterance"
    members: tuple[str, ...] = members_for(NAMES)
    predicts_labels = True  # False: evaluate() returns embeddings for k-NN

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.names = cfg.label_names  # from the shards' index.json (config.checks.resolve_labels)

    # -- model ---------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def prepare(self, model: nn.Module) -> None:
        """Data-dependent set-up of a freshly built model before training (none by default).

        Not part of build_model: exported models are rebuilt without the training data at hand.
        """
    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """AdamW groups: pretrained encoder vs new layers (different lr), no weight decay on biases/norms."""
        t = self.cfg.train
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            key = (self.is_pretrained(name), p.ndim <= 1 or any(k in name for k in NO_DECAY))
            groups.setdefault(key, []).append(p)
        return [{"params": ps, "lr": t.encoder_lr if pre else t.lr, "weight_decay": 0.0 if nodecay else t.weight_decay,
                 "name": f"{'encoder' if pre else 'new'}{'_nodecay' if nodecay else ''}"}
                for (pre, nodecay), ps in sorted(groups.items())]

    def is_pretrained(self, param_name: str) -> bool:
        return False

    def frozen_source(self) -> str | None:
        """Where the model's frozen parameters come from when build_model runs again, if they are all loaded
        from there unchanged (then checkpoints leave them out); None: checkpoints hold every parameter."""
        return None

    # -- data ----------------------------------------------------------------------------------------
    def loader_config(self, train: bool) -> LoaderConfig:
        d = self.cfg.data
        size = (d.frame_width, d.frame_height) if d.frame_width and d.frame_height else None
        return LoaderConfig(level=self.level, batch_size=d.batch_size, num_workers=d.num_workers, train=train,
                            num_frames=d.num_frames, frame_size=size, shuffle_buffer=d.shuffle_buffer,
                            seed=self.cfg.train.seed, members=self.members,
                            read=read_policy(self.cfg, str(Path(self.cfg.output_dir) / "skipped_shards.jsonl")))

    def loader(self, split: str, train: bool, rank: int, world: int) -> DataLoader:
        return make_loader(self.cfg.data.shards, split, self.loader_config(train), rank, world)

    # -- steps ---------------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        raise NotImplementedError

    def classification_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Classifier stages' loss: cross-entropy with train.class_weights and train.focal_gamma.

        Frequency weights come from the training split's label counts in the shards' index.json, read once.
        """
        if not hasattr(self, "_class_weight"):
            t = self.cfg.train
            counts = []
            if isinstance(t.class_weights, str) and t.class_weights != "none":
                found = load_index(Path(self.cfg.data.shards))["splits"][self.cfg.data.train_split]["labels"]
                counts = [found.get(n, 0) for n in self.names]
            weights = class_weights(t.class_weights, counts or [1] * len(self.names))
            self._class_weight = torch.tensor(weights, dtype=torch.float32) if weights else None
        weight = self._class_weight.to(logits.device) if self._class_weight is not None else None
        return classification_loss(logits, labels, weight, self.cfg.train.focal_gamma, IGNORE_INDEX)

    def evaluate(self, model: nn.Module, batch: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(labels, outputs, keys) of the batch's valid rows: predictions, or embeddings for k-NN."""
        raise NotImplementedError

