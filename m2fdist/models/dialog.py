"""M2FNet's dialog level: per-modality Transformers over a dialog's utterances, m attention
fusion layers, and the classifier.

Inputs are per-utterance features [B, K, D] for a batch of B dialogs padded to K utterances, with
``mask`` [B, K] True at real utterances. Padding never reaches a real position: every attention takes
``key_padding_mask`` and everything else works position by position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from m2fdist.common.modalities import BY_LETTER, LETTERS


@dataclass
class DialogConfig:
    num_classes: int = 7  # set from dataset by the run config
    dim_text: int = 1024  # D_T: roberta-large's hidden size; in a run config 0 = from the features' index.json
    dim_audio: int = 300  # D_A; in a run config 0 = from the features' index.json
    dim_visual: int = 600  # D_V: face 300 + scene 300 (300 for one branch); run config: 0 = from index.json
    modalities: str = "TAV"  # any non-empty subset of T, A, V: the paper's modality ablations
    fusion: str = "attention"  # or "concat": the paper's "concatenation instead of fusion" row
    num_layers: int = 1  # N: 1 for MELD, 5 for IEMOCAP
    num_fusion_layers: int = 5  # m
    num_heads: int = 8  # attention heads (lowered to a divisor of the width where needed)
    ffn_mult: int = 4  # Transformer feed-forward width, as a multiple of the model width
    dropout: float = 0.4  # paper: 0.4 to 0.5
    head_hidden: int = 512  # width of the classifier's hidden FC layer
    # Ours, not the paper's (which does not say): a residual + LayerNorm around each fusion layer, so a
    # stack of m = 5 trains as stably as the encoders do. fusion_residual=False is the bare mapping.
    fusion_residual: bool = True
    # Ours as well: each modality's features standardised per dimension with the training split's mean
    # and std (set by the fusion stage before training, saved as buffers, so an exported model applies
    # them too). The extractors' outputs live on very different scales (RoBERTa's <s> state against
    # L2-normalised triplet embeddings whose coordinates are ~1/sqrt(D) around a shared offset), and raw
    # the dialog Transformers all but ignore the small ones. standardize=False feeds them as they are.
    standardize: bool = True

    def __post_init__(self) -> None:
        mods = self.modalities.upper()
        if not mods or set(mods) - set(LETTERS) or len(set(mods)) != len(mods):
            raise ValueError(f"modalities must be a subset of 'TAV', got {self.modalities!r}")
        if self.fusion not in ("attention", "concat"):
            raise ValueError(f"fusion must be 'attention' or 'concat', not {self.fusion!r}")
        if self.fusion == "attention" and ("T" not in mods or len(mods) == 1):
            raise ValueError("attention fusion needs text (the query) and at least one of audio / visual; "
                             "use fusion=concat for this modality subset")
        self.modalities = mods


class Standardize(nn.Module):
    """(x - mean) / std per dimension, with the statistics as buffers (identity until they are set).

    Computed in float32 whatever the model's precision: a feature whose mean is large against its spread
    would lose the spread if x and mean were rounded to bf16 first. The model casts the result.
    """
    keeps_fp32_buffers = True  # the trainer leaves these buffers in float32 under bf16 / fp16

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_stats(self, mean: Tensor, std: Tensor) -> None:
        if mean.shape != self.mean.shape or std.shape != self.std.shape:
            raise ValueError(f"statistics of shape {tuple(mean.shape)} / {tuple(std.shape)} for {self.mean.numel()}-d "
                             "features")
        # a dimension that never varies on the training split stays as it is rather than being blown up
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
        self.mean.copy_(mean)
        self.std.copy_(std)

    def forward(self, x: Tensor) -> Tensor:
        return (x.float() - self.mean) / self.std


def _heads_for(dim: int, wanted: int) -> int:
    """The largest head count <= wanted that divides dim (300-d features cannot take 8 heads)."""
    return next(h for h in range(min(wanted, dim), 0, -1) if dim % h == 0)


class ModalityEncoder(nn.Module):
    """N Transformer-encoder layers over a dialog, with a skip connection around the whole stack."""
    def __init__(self, dim: int, layers: int, heads: int, ffn_mult: int, dropout: float):
        super().__init__()
        layer = nn.TransformerEncoderLayer(dim, _heads_for(dim, heads), ffn_mult * dim, dropout, batch_first=True)
        self.stack = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False) if layers else None

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if self.stack is None:
            return x
        return x + self.stack(x, src_key_padding_mask=~mask)


class FusionLayer(nn.Module):
    """Text is query and value, each other modality is key; outputs concatenated and mapped back to D_T."""
    def __init__(self, dim_text: int, key_dims: list[int], heads: int, dropout: float, residual: bool = True):
        super().__init__()
        self.residual = residual
        h = _heads_for(dim_text, heads)
        self.attn = nn.ModuleList(
            nn.MultiheadAttention(dim_text, h, dropout=dropout, kdim=d, vdim=dim_text, batch_first=True)
            for d in key_dims
        )
        self.proj = nn.Linear(len(key_dims) * dim_text, dim_text)
        self.norm = nn.LayerNorm(dim_text) if residual else nn.Identity()

    def forward(self, text: Tensor, keys: list[Tensor], mask: Tensor) -> Tensor:
        outs = [attn(text, k, text, key_padding_mask=~mask, need_weights=False)[0]
                for attn, k in zip(self.attn, keys, strict=True)]
        fused = self.proj(torch.cat(outs, dim=-1))
        return self.norm(text + fused) if self.residual else fused


class M2FNetDialog(nn.Module):
    """Dialog-level M2FNet: logits [B, K, C] from per-utterance features."""
    def __init__(self, config: DialogConfig):
        super().__init__()
        self.config = c = config
        dims = {m: getattr(c, BY_LETTER[m].dim_key) for m in c.modalities}
        if min(dims.values()) < 1:  # 0 means "from the features' index.json", which load_config resolves
            raise ValueError(f"feature widths {dims} must be set (load the run config with load_config)")
        self.standardize = nn.ModuleDict({m: Standardize(dims[m]) for m in c.modalities} if c.standardize else {})
        self.encoders = nn.ModuleDict({
            m: ModalityEncoder(dims[m], c.num_layers, c.num_heads, c.ffn_mult, c.dropout) for m in c.modalities
        })
        others = [m for m in c.modalities if m != "T"]
        self.fusion = nn.ModuleList(
            FusionLayer(c.dim_text, [dims[m] for m in others], c.num_heads, c.dropout, c.fusion_residual)
            for _ in range(c.num_fusion_layers if c.fusion == "attention" else 0)
        )
        width = sum(dims[m] for m in c.modalities)
        self.head = nn.Sequential(
            nn.Dropout(c.dropout), nn.Linear(width, c.head_hidden), nn.ReLU(), nn.Dropout(c.dropout),
            nn.Linear(c.head_hidden, c.num_classes),
        )

    def forward(self, mask: Tensor, text: Tensor | None = None, audio: Tensor | None = None,
                visual: Tensor | None = None) -> Tensor:
        given = {"T": text, "A": audio, "V": visual}
        missing = [BY_LETTER[m].name for m in self.config.modalities if given[m] is None]
        if missing:
            raise ValueError(f"modalities {self.config.modalities} need {', '.join(missing)} features")
        mask = mask.bool()
        dtype = self.head[-1].weight.dtype  # features arrive in float32; standardised, they take the model's
        given = {m: (self.standardize[m](x) if m in self.standardize else x).to(dtype)
                 for m, x in given.items() if x is not None}
        encoded = {m: self.encoders[m](given[m], mask) for m in self.config.modalities}
        others = [encoded[m] for m in self.config.modalities if m != "T"]
        if self.fusion:
            t = encoded["T"]
            for layer in self.fusion:  # the text stream carries on; audio and visual stay fixed
                t = layer(t, others, mask)
            encoded["T"] = t
        return self.head(torch.cat([encoded[m] for m in self.config.modalities], dim=-1))

    def set_feature_stats(self, stats: dict[str, tuple[Tensor, Tensor]]) -> None:
        """Mean and std per modality ("T", "A", "V") of the training split's features."""
        for m, norm in self.standardize.items():
            if m not in stats:
                raise ValueError(f"no feature statistics for modality {m}")
            norm.set_stats(*stats[m])
