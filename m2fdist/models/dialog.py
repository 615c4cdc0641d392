"""M2FNet's dialog level (DESIGN §3): per-modality Transformers over a dialog's utterances, m attention
fusion layers, and the classifier.

Inputs are per-utterance features [B, K, D] for a batch of B dialogs padded to K utterances, with
``mask`` [B, K] True at real utterances. Padding never reaches a real position: every attention takes
``key_padding_mask`` and everything else works position by position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

MODALITIES = ("text", "audio", "visual")


@dataclass
class DialogConfig:
    num_classes: int = 7
    dim_text: int = 1024  # D_T: roberta-large's hidden size
    dim_audio: int = 300
    dim_visual: int = 600  # face 300 + scene 300; 300 for face-only or scene-only video
    modalities: str = "TAV"  # any non-empty subset of T, A, V: the paper's modality ablations
    fusion: str = "attention"  # or "concat": the paper's "concatenation instead of fusion" row
    num_layers: int = 1  # N: 1 for MELD, 5 for IEMOCAP
    num_fusion_layers: int = 5  # m
    num_heads: int = 8
    ffn_mult: int = 4
    dropout: float = 0.4
    head_hidden: int = 512
    # Ours, not the paper's (which does not say): a residual + LayerNorm around each fusion layer, so a
    # stack of m = 5 trains as stably as the encoders do. fusion_residual=False is the bare mapping.
    fusion_residual: bool = True

    def __post_init__(self) -> None:
        mods = self.modalities.upper()
        if not mods or set(mods) - set("TAV") or len(set(mods)) != len(mods):
            raise ValueError(f"modalities must be a subset of 'TAV', got {self.modalities!r}")
        if self.fusion not in ("attention", "concat"):
            raise ValueError(f"fusion must be 'attention' or 'concat', not {self.fusion!r}")
        if self.fusion == "attention" and ("T" not in mods or len(mods) == 1):
            raise ValueError("attention fusion needs text (the query) and at least one of audio / visual; "
                             "use fusion=concat for this modality subset")
        self.modalities = mods


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
        dims = {"T": c.dim_text, "A": c.dim_audio, "V": c.dim_visual}
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
        missing = [MODALITIES["TAV".index(m)] for m in self.config.modalities if given[m] is None]
        if missing:
            raise ValueError(f"modalities {self.config.modalities} need {', '.join(missing)} features")
        mask = mask.bool()
        encoded = {m: self.encoders[m](given[m], mask) for m in self.config.modalities}
        others = [encoded[m] for m in self.config.modalities if m != "T"]
        if self.fusion:
            t = encoded["T"]
            for layer in self.fusion:  # the text stream carries on; audio and visual stay fixed
                t = layer(t, others, mask)
            encoded["T"] = t
        return self.head(torch.cat([encoded[m] for m in self.config.modalities], dim=-1))
