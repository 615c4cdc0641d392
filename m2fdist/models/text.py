"""Text model (DESIGN §3): a Hugging Face text model fine-tuned as an utterance classifier, fed the utterance
with up to k previous and k next utterances of its dialog.

Input formats (``text.input_format``):

- ``sep`` (the paper's, EmoBERTa-style): ``<s> prev_k </s> … prev_1 </s></s> target </s></s> next_1 </s> …
  next_k </s>``: the target is marked by doubled separators (``[CLS]`` / ``[SEP]`` for BERT-style
  tokenizers; a decoder's BOS / EOS where it has no CLS / SEP);
- ``sep_speaker``: the same with every turn written ``Speaker: text`` (EmoBERTa found speaker names help);
- ``past``: ``sep_speaker`` with past context only, for a model that must answer before the dialog goes on;
- ``prompt``: an instruction for decoder LLMs (our own template, in the spirit of InstructERC): the dialog
  history one ``Speaker: text`` line per turn, the target line marked, the label set named, ending where the
  answer would start, so the last token's state is the one that decides.

Whatever the format, when the whole exceeds the model's length, neighbours are dropped farthest first
(alternating past and future at equal distance, past first); the target is cut only if it alone does not fit.

The sentence vector (D_T, what extraction writes) is pooled over the final hidden states (``text.pooling``):
``first`` token (encoders' default; what RoBERTa's classification head reads), ``last`` real token (decoders'
default: in a causal model only the last token has seen the whole input), or the masked ``mean`` (what
sentence-transformers checkpoints such as all-MiniLM-L6-v2 were trained with).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

INPUT_FORMATS = ("sep", "sep_speaker", "past", "prompt")
POOLINGS = ("first", "last", "mean")

# A turn of the dialog: plain text, or a mapping with "text" and (optionally) "speaker", as the samples'
# json carries it (``context_prev`` / ``context_next`` entries, and the sample's own meta).
Turn = str | Mapping[str, Any]


@dataclass
class TextConfig:
    model: str = "roberta-large"  # any local path or hub name that AutoModel loads
    context: int = 2  # k neighbours on each side
    max_length: int = 512
    dropout: float = 0.1
    num_classes: int = 7
    pooling: str = ""  # first | last | mean; "": first for encoders, last real token for decoders
    input_format: str = "sep"  # sep | sep_speaker | past | prompt (module docstring)

    def __post_init__(self) -> None:
        if self.pooling not in ("", *POOLINGS):
            raise ValueError(f"text.pooling must be one of {POOLINGS} (or empty for the model's default), "
                             f"not {self.pooling!r}")
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(f"text.input_format must be one of {INPUT_FORMATS}, not {self.input_format!r}")
        if self.context < 0:
            raise ValueError(f"text.context must be >= 0, not {self.context}")


def _speaker_text(turn: Turn, with_speaker: bool) -> str:
    if isinstance(turn, str):
        return turn
    text, speaker = str(turn.get("text", "")), str(turn.get("speaker") or "")
    return f"{speaker}: {text}" if with_speaker and speaker else text


def _fit(assemble: Callable[[list, list[int], list], list[int]], past: list, tgt: list[int], future: list,
         max_length: int) -> list[int]:
    """Drop the farthest neighbours until ``assemble(past, tgt, future)`` fits; cut the target only last.

    ``past`` is nearest last, ``future`` nearest first; both are consumed.
    """
    while len(assemble(past, tgt, future)) > max_length and (past or future):
        if len(past) >= len(future):  # the farthest remaining neighbour; past first at equal distance
            past.pop(0)
        else:
            future.pop()
    ids = assemble(past, tgt, future)
    if len(ids) > max_length:  # the target alone is too long: only now is it cut
        keep = len(tgt) - (len(ids) - max_length)
        if keep < 1:
            raise ValueError(f"max_length {max_length} cannot hold the input format's fixed tokens and a token")
        ids = assemble(past, tgt[:keep], future)
    return ids


def build_input(tokenizer, target: Turn, prev: Sequence[Turn], nxt: Sequence[Turn], k: int, max_length: int,
                input_format: str = "sep", labels: Sequence[str] = ()) -> list[int]:
    """Token ids of one utterance with up to ``k`` neighbours each side, fitted to ``max_length``.

    ``labels`` (the class names) are needed by the ``prompt`` format only.
    """
    if max_length < 3:
        raise ValueError(f"max_length {max_length} cannot hold <s>, a token and </s>")
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format must be one of {INPUT_FORMATS}, not {input_format!r}")
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    with_speaker = input_format != "sep"
    nxt = [] if input_format == "past" else nxt
    if input_format == "prompt":
        return _build_prompt(tokenizer, enc, target, list(prev[-k:]) if k else [], list(nxt[:k]) if k else [],
                             max_length, labels)
    cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if sep is None:
        raise ValueError("the tokenizer has neither a SEP nor an EOS token to separate turns: use "
                         "text.input_format=prompt")
    head = [] if cls is None else [cls]
    past = [enc(_speaker_text(s, with_speaker)) for s in prev[-k:]] if k else []  # nearest last
    future = [enc(_speaker_text(s, with_speaker)) for s in nxt[:k]] if k else []  # nearest first

    def assemble(past: list, tgt: list[int], future: list) -> list[int]:
        ids = list(head)
        for p in past:
            ids += p + [sep]
        ids += ([sep] if past else []) + tgt + [sep, sep]
        for f in future:
            ids += f + [sep]
        return ids if future else ids[:-1]

    return _fit(assemble, past, enc(_speaker_text(target, with_speaker)), future, max_length)


PROMPT_INTRO = "Below is part of a conversation. The utterance between <target> and </target> is the one to judge.\n"
PROMPT_QUESTION = "Which emotion does the speaker of the target utterance express? Answer with one of: {labels}.\n"
PROMPT_ANSWER = "Answer:"


def _build_prompt(tokenizer, enc, target: Turn, past_turns: list[Turn], future_turns: list[Turn],
                  max_length: int, labels: Sequence[str]) -> list[int]:
    """The ``prompt`` format: intro, one ``Speaker: text`` line per turn with the target marked, the question.

    Pieces are tokenised separately (each ends with a newline), so dropping a turn never re-tokenises the rest.
    """
    if not labels:
        raise ValueError("input_format=prompt names the label set: give the class names")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else (
        [tokenizer.cls_token_id] if tokenizer.cls_token_id is not None else [])
    intro = bos + enc(PROMPT_INTRO)
    outro = enc(PROMPT_QUESTION.format(labels=", ".join(labels))) + enc(PROMPT_ANSWER)
    speaker = "" if isinstance(target, str) else str(target.get("speaker") or "")
    open_tag, close_tag = enc(f"<target> {speaker}: " if speaker else "<target> "), enc(" </target>\n")
    tgt = enc(_speaker_text(target, False))
    past = [enc(_speaker_text(t, True) + "\n") for t in past_turns]
    future = [enc(_speaker_text(t, True) + "\n") for t in future_turns]

    def assemble(past: list, tgt: list[int], future: list) -> list[int]:
        return [*intro, *(i for p in past for i in p), *open_tag, *tgt, *close_tag, *(i for f in future for i in f),
                *outro]

    return _fit(assemble, past, tgt, future, max_length)


def is_encoder(model_config: Any) -> bool:
    """Bidirectional encoder (BERT, RoBERTa, DeBERTa, ELECTRA, ...) or decoder-only LLM?

    Encoder families are the ones transformers gives a masked-LM head; Llama, Qwen, Mistral and Gemma have none.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return getattr(model_config, "model_type", "") in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def pool(hidden: Tensor, mask: Tensor, how: str) -> Tensor:
    """[B, L, H] states → [B, H]: the first real token, the last real token, or the masked mean.

    Works for right and left padding alike: positions come from the mask, not from the padding side.
    """
    if how == "mean":
        m = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    real = mask.bool()
    if how == "first":
        idx = torch.where(real, positions, mask.shape[1]).min(1).values
    elif how == "last":
        idx = torch.where(real, positions, -1).max(1).values
    else:
        raise ValueError(f"pooling must be one of {POOLINGS}, not {how!r}")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


def turns_of(meta: Mapping[str, Any]) -> tuple[Turn, list[Turn], list[Turn]]:
    """(target, previous turns, next turns) of a sample's json meta, speakers included."""
    return meta, list(meta.get("context_prev", [])), list(meta.get("context_next", []))


class TextModel(nn.Module):
    """Text model + classification head; ``sentence_vector`` gives D_T for feature extraction."""

    def __init__(self, encoder: nn.Module, tokenizer, config: TextConfig, labels: Sequence[str] = ()):
        super().__init__()
        self.encoder, self.tokenizer, self.config = encoder, tokenizer, config
        self.labels = list(labels)
        hidden = encoder.config.hidden_size
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(hidden, hidden), nn.Tanh(),
                                  nn.Dropout(config.dropout), nn.Linear(hidden, config.num_classes))
        self.max_length = min(config.max_length, _position_limit(encoder))
        self.pooling = config.pooling or ("first" if is_encoder(encoder.config) else "last")
        if config.input_format == "prompt" and not self.labels:
            raise ValueError("text.input_format=prompt names the label set: build the TextModel with labels")

    @classmethod
    def from_pretrained(cls, config: TextConfig, labels: Sequence[str] = (), **kwargs) -> TextModel:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(config.model)
        encoder = AutoModel.from_pretrained(config.model, add_pooling_layer=False, **kwargs)
        return cls(encoder, tokenizer, config, labels)

    @property
    def dim(self) -> int:
        return self.encoder.config.hidden_size

    def input_ids(self, target: Turn, prev: Sequence[Turn], nxt: Sequence[Turn]) -> list[int]:
        c = self.config
        return build_input(self.tokenizer, target, prev, nxt, c.context, self.max_length, c.input_format,
                           self.labels)

    def tokenize(self, targets: Sequence[Turn], prev: Sequence[Sequence[Turn]],
                 nxt: Sequence[Sequence[Turn]]) -> dict[str, Tensor]:
        """A padded batch (input_ids, attention_mask); turns are strings or {"speaker", "text"} mappings."""
        ids = [self.input_ids(t, p, n) for t, p, n in zip(targets, prev, nxt, strict=True)]
        width = max(len(i) for i in ids)
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, i in enumerate(ids):
            input_ids[row, : len(i)] = torch.tensor(i)
            mask[row, : len(i)] = 1
        device = next(self.parameters()).device
        return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}

    def tokenize_metas(self, metas: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        """A padded batch from samples' json metas: text, speaker and the context turns with their speakers."""
        targets, prev, nxt = zip(*(turns_of(m) for m in metas), strict=True)
        return self.tokenize(targets, prev, nxt)

    def sentence_vector(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.head(self.sentence_vector(input_ids, attention_mask))


def _position_limit(encoder: nn.Module) -> int:
    """RoBERTa reserves padding_idx + 1 positions, so 514 position embeddings hold 512 tokens."""
    cfg = encoder.config
    limit = getattr(cfg, "max_position_embeddings", 512)
    if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= (cfg.pad_token_id or 0) + 1
    return limit
