"""Text model (DESIGN §3): a Hugging Face encoder (RoBERTa by default) fine-tuned as an utterance
classifier, fed the utterance with its k previous and k next utterances.

Input: ``<s> prev_k </s> … prev_1 </s></s> target </s></s> next_1 </s> … next_k </s>``: the target is
marked by doubled separators. When the whole exceeds the encoder's length, neighbours are dropped
farthest first (alternating past and future at equal distance, past first); the target is cut only if
it alone does not fit. The sentence vector is the encoder's first-token (``<s>``) state, the vector
RoBERTa's own classification head reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class TextConfig:
    model: str = "roberta-large"  # any local path or hub name that AutoModel loads
    context: int = 2  # k neighbours on each side
    max_length: int = 512
    dropout: float = 0.1
    num_classes: int = 7


def build_input(tokenizer, target: str, prev: list[str], nxt: list[str], k: int, max_length: int) -> list[int]:
    """Token ids of one utterance with up to ``k`` neighbours each side, fitted to ``max_length``."""
    if max_length < 3:
        raise ValueError(f"max_length {max_length} cannot hold <s>, a token and </s>")
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    past = [enc(s) for s in prev[-k:]] if k else []  # nearest last
    future = [enc(s) for s in nxt[:k]] if k else []  # nearest first
    tgt = enc(target)

    def assemble() -> list[int]:
        ids = [cls]
        for p in past:
            ids += p + [sep]
        ids += ([sep] if past else []) + tgt + [sep, sep]
        for f in future:
            ids += f + [sep]
        return ids if future else ids[:-1]

    while len(assemble()) > max_length and (past or future):
        if len(past) >= len(future):  # the farthest remaining neighbour; past first at equal distance
            past.pop(0)
        else:
            future.pop()
    ids = assemble()
    if len(ids) > max_length:  # the target alone is too long: only now is it cut
        tgt = tgt[: max_length - 2]
        ids = assemble()
    return ids


class TextModel(nn.Module):
    """Encoder + classification head; ``sentence_vector`` gives D_T for feature extraction."""

    def __init__(self, encoder: nn.Module, tokenizer, config: TextConfig):
        super().__init__()
        self.encoder, self.tokenizer, self.config = encoder, tokenizer, config
        hidden = encoder.config.hidden_size
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(hidden, hidden), nn.Tanh(),
                                  nn.Dropout(config.dropout), nn.Linear(hidden, config.num_classes))
        self.max_length = min(config.max_length, _position_limit(encoder))

    @classmethod
    def from_pretrained(cls, config: TextConfig, **kwargs) -> TextModel:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(config.model)
        encoder = AutoModel.from_pretrained(config.model, add_pooling_layer=False, **kwargs)
        return cls(encoder, tokenizer, config)

    @property
    def dim(self) -> int:
        return self.encoder.config.hidden_size

    def tokenize(self, texts: list[str], prev: list[list[str]], nxt: list[list[str]]) -> dict[str, Tensor]:
        """A padded batch (input_ids, attention_mask) for the encoder."""
        ids = [build_input(self.tokenizer, t, p, n, self.config.context, self.max_length)
               for t, p, n in zip(texts, prev, nxt, strict=True)]
        width = max(len(i) for i in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, i in enumerate(ids):
            input_ids[row, : len(i)] = torch.tensor(i)
            mask[row, : len(i)] = 1
        device = next(self.parameters()).device
        return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}

    def sentence_vector(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.head(self.sentence_vector(input_ids, attention_mask))


def _position_limit(encoder: nn.Module) -> int:
    """RoBERTa reserves padding_idx + 1 positions, so 514 position embeddings hold 512 tokens."""
    cfg = encoder.config
    limit = getattr(cfg, "max_position_embeddings", 512)
    if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= (cfg.pad_token_id or 0) + 1
    return limit
