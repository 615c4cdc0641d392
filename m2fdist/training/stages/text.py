"""Text stage: fine-tune a text model (with dialog context) as an utterance classifier; only the json is decoded.

The loader workers tokenise (``TokenizeBatch``), so the training loop receives ready ``input_ids``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor, nn

from m2fdist.data import LoaderConfig
from m2fdist.models.device import to_device
from m2fdist.models.text import TextModel
from m2fdist.models.text_config import INPUT_KEYS
from m2fdist.models.text_inputs import TextBatcher, TokenizeBatch
from m2fdist.training.stages.base import Stage


class TextStage(Stage):
    name = "text"
    members = ("json",)

    batcher: TextBatcher | None = None

    def build_model(self) -> nn.Module:
        model = TextModel.from_pretrained(self.cfg.text, labels=self.names)
        self.batcher = model.batcher
        return model

    def loader_config(self, train: bool) -> LoaderConfig:
        config = super().loader_config(train)
        if self.batcher is not None:
            config.transform = TokenizeBatch(self.batcher)
        return config

    def is_pretrained(self, param_name: str) -> bool:
        return param_name.startswith("encoder.")

    def frozen_source(self) -> str | None:
        """Adapter (LoRA, peft) and frozen runs train adapters and the head only: the base is text.model."""
        return self.cfg.text.model if self.cfg.text.finetune in ("lora", "peft", "frozen") else None

    def _logits(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        if "input_ids" not in batch:  # a loader without the workers' tokeniser
            inner = getattr(model, "module", model)  # the DeepSpeed engine wraps the TextModel
            batch = {**batch, **inner.batcher.from_metas(batch["meta"])}
        return model(**{k: to_device(batch[k], model) for k in INPUT_KEYS if k in batch})

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        logits = self._logits(model, batch)
        return self.classification_loss(logits, to_device(batch["labels"], model))

    def evaluate(self, model: nn.Module, batch: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        probs = self._logits(model, batch).float().softmax(-1).cpu().numpy()
        valid = batch["valid"].numpy()
        keys = [k for k, v in zip(batch["keys"], valid, strict=True) if v]
        return batch["labels"].numpy()[valid], probs[valid], keys
