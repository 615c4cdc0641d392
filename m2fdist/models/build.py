"""A stage's model architecture from its run config: what training starts from and what an export loads into.

One builder for both, so an export can never be rebuilt differently from the model that was trained; it lives
with the models (not the training stages) so that loading an export (:mod:`m2fdist.inference.load`) needs no
training code. The text model is built elsewhere: from a pretrained checkpoint
(:meth:`m2fdist.models.text.TextModel.from_pretrained`) for training, from the export's own encoder config for
inference (:mod:`m2fdist.inference.load`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from m2fdist.models.audio import AudioExtractor
from m2fdist.models.dialog import M2FNetDialog
from m2fdist.models.visual import VisualExtractor


def embedding_dims(stage: str, cfg: Any) -> list[int]:
    """Widths of the embeddings an extractor stage's model returns, in order (one per visual branch)."""
    if stage == "audio":
        return [cfg.audio.embed_dim]
    c = cfg.visual
    return [c.embed_dim] * (c.out_dim // c.embed_dim)


def build_model(stage: str, cfg: Any, num_classes: int) -> nn.Module:
    """The audio, visual or fusion model of a run config (a RunConfig), randomly initialised.

    Extractors get one linear classifier per embedding when ``triplet.ce_weight`` asks for the CE term: the
    heads live on the model so DeepSpeed optimises and checkpoints them like any other weight; feature
    extraction never calls them.
    """
    if stage == "fusion":
        return M2FNetDialog(cfg.fusion)
    if stage == "audio":
        model: nn.Module = AudioExtractor(cfg.audio)
    elif stage == "visual":
        model = VisualExtractor(cfg.visual)
    else:
        raise ValueError(f"build_model builds the audio, visual and fusion models, not {stage!r}")
    if cfg.triplet.ce_weight > 0:
        model.ce_heads = nn.ModuleList(nn.Linear(d, num_classes) for d in embedding_dims(stage, cfg))
    return model
