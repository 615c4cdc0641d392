"""Text stage: fine-tune a text model (with dialog context) as an utterance classifier; only the json is decoded."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor, nn

from m2fdist.models.text import TextModel
from m2fdist.stages.base import Stage, to_device


class TextStage(Stage):
    name = "text"
    members = ("json",)

    def build_model(self) -> nn.Module:
        return TextModel.from_pretrained(self.cfg.text, labels=self.names)

    def is_pretrained(self, param_name: str) -> bool:
        return param_name.startswith("encoder.")

    def _logits(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        inner = getattr(model, "module", model)  # the DeepSpeed engine wraps the TextModel
        inputs = inner.tokenize_metas(batch["meta"])  # speakers of the target and its context included
        return model(**inputs)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        logits = self._logits(model, batch)
        return self.classification_loss(logits, to_device(batch["labels"], model))

    def evaluate(self, model: nn.Module, batch: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        probs = self._logits(model, batch).float().softmax(-1).cpu().numpy()
        valid = batch["valid"].numpy()
        keys = [k for k, v in zip(batch["keys"], valid, strict=True) if v]
        return batch["labels"].numpy()[valid], probs[valid], keys
