"""Audio and visual stages: extractors trained with the adaptive-margin triplet loss plus VICReg terms,
triplets mined in the batch from the emotion labels. Evaluated by leave-one-out k-NN on embeddings.

The visual stage starts its backbones from ``visual.face_init`` / ``visual.scene_init`` and takes face boxes
from a face set (``m2fdist faces``, ``visual.faces``) where one covers the batch, else from MTCNN."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m2fdist.common.modalities import members_for
from m2fdist.config.schema import RunConfig
from m2fdist.faces.faceset import FaceSet, FaceSettings, face_boxes, open_faces
from m2fdist.models.build import build_model
from m2fdist.models.device import dtype_of, to_device
from m2fdist.models.losses import feature_extractor_loss, mine_triplets
from m2fdist.models.visual import VisualExtractor
from m2fdist.training.stages.base import Stage


class ExtractorStage(Stage):
    predicts_labels = False

    def build_model(self) -> nn.Module:
        return build_model(self.name, self.cfg, len(self.names))

    def embeddings(self, model: nn.Module, batch: dict[str, Any]) -> list[Tensor]:
        """One or more [B, D] embeddings per batch; each gets its own triplet loss."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        t = self.cfg.triplet
        labels = to_device(batch["labels"], model)
        total = None
        heads = getattr(model, "module", model).ce_heads if t.ce_weight > 0 else None
        real = to_device(batch["valid"], model)  # padding samples a rank adds to even out the split
        for i, emb in enumerate(self.embeddings(model, batch)):
            emb = emb.float()
            a, p, n = mine_triplets(labels, emb.detach(), t.mining, t.max_triplets, t.margin)
            if len(a) == 0:  # a batch of one emotion: no triplet, but every rank must still backward
                part = emb.sum() * 0.0
            else:
                part = feature_extractor_loss(emb[a], emb[p], emb[n], tuple(t.weights))
            if heads is not None:
                logits = heads[i](emb.to(heads[i].weight.dtype)).float() / t.ce_temperature
                # all padding: the head's weights still take part in the backward, as every rank's must
                ce = F.cross_entropy(logits[real], labels[real]) if bool(real.any()) else logits.sum() * 0.0
                part = part + t.ce_weight * ce
            total = part if total is None else total + part
        return total

    def evaluate(self, model: nn.Module, batch: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        emb = torch.cat([e.float() for e in self.embeddings(model, batch)], dim=-1).cpu().numpy()
        valid = batch["valid"].numpy()
        keys = [k for k, v in zip(batch["keys"], valid, strict=True) if v]
        return batch["labels"].numpy()[valid], emb[valid], keys


class AudioStage(ExtractorStage):
    name = "audio"
    members = members_for(("audio",))

    def embeddings(self, model: nn.Module, batch: dict[str, Any]) -> list[Tensor]:
        audio = to_device(batch["audio"], model).to(dtype_of(model))
        return [model(audio, batch["audio_len"])]


class VisualStage(ExtractorStage):
    name = "visual"
    members = members_for(("visual",))

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        self._faces: FaceSet | None = None
        self._faces_opened = False

    def prepare(self, model: nn.Module) -> None:
        """Pretrained backbones, and the face set opened now, so a wrong ``visual.faces`` fails before training."""
        model.load_pretrained()
        self.face_set()

    def face_set(self) -> FaceSet | None:
        if not self._faces_opened and "face" in self.cfg.visual.branches:
            settings = FaceSettings(self.cfg.data.num_frames, self.cfg.visual.min_face_size)
            self._faces = open_faces(self.cfg.visual.faces, self.cfg.data.shards, settings,
                                     verbose=int(os.environ.get("RANK", 0)) == 0)
        self._faces_opened = True
        return self._faces

    def embeddings(self, model: nn.Module, batch: dict[str, Any]) -> list[Tensor]:
        inner: VisualExtractor = getattr(model, "module", model)
        frames, hw = to_device(batch["frames"], model), batch["frame_hw"]
        out = []
        if inner.face is not None:
            boxes = face_boxes(inner, self.face_set(), batch["keys"], frames, hw)
            # through the engine's forward would re-run MTCNN; the branches are called directly instead
            out.append(F.normalize(inner.face_features(frames, boxes, hw), dim=-1))
        if inner.scene is not None:
            out.append(inner.scene_features(frames, hw))
        return out
