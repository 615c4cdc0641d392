"""Fusion stage: the dialog-level M2FNet over extracted per-utterance features, cross-entropy over all
utterances of all dialogs in the batch."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from m2fdist.common.modalities import NAME_OF as FEATURE_OF
from m2fdist.config.errors import ConfigError
from m2fdist.data.features import feature_moments
from m2fdist.models.build import build_model
from m2fdist.models.device import to_device
from m2fdist.training.stages.base import Stage


class FusionStage(Stage):
    name = "fusion"
    level = "features"

    def build_model(self) -> nn.Module:
        return build_model("fusion", self.cfg, len(self.names))

    def prepare(self, model: nn.Module) -> None:
        if not self.cfg.fusion.standardize:
            return
        mods = self.cfg.fusion.modalities
        split = self.cfg.data.train_split
        moments = feature_moments(self.cfg.data.shards, split, tuple(FEATURE_OF[m] for m in mods))
        for m in mods:
            name = FEATURE_OF[m]
            want, got = getattr(self.cfg.fusion, f"dim_{name}"), len(moments[name][0])
            if want != got:
                raise ConfigError(f"fusion.dim_{name}={want}, but the {name} features in {self.cfg.data.shards} "
                                  f"are {got}-d")
        model.set_feature_stats({m: tuple(torch.from_numpy(v).float() for v in moments[FEATURE_OF[m]]) for m in mods})

    def _logits(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        # float32 in: the model standardises them before casting to its own precision
        feats = {FEATURE_OF[m]: to_device(batch[FEATURE_OF[m]], model) for m in self.cfg.fusion.modalities}
        return model(to_device(batch["mask"], model), **feats)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        logits = self._logits(model, batch).float()
        labels = to_device(batch["labels"], model)
        return self.classification_loss(logits.flatten(0, 1), labels.flatten())

    def evaluate(self, model: nn.Module, batch: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        probs = self._logits(model, batch).float().softmax(-1).cpu().numpy()
        real = (batch["mask"] & batch["valid"][:, None]).numpy()
        keys = [k for row, ks in zip(real, batch["keys"], strict=True) for k, r in zip(ks, row, strict=False) if r]
        return batch["labels"].numpy()[real], probs[real], keys
