"""Text model: a Hugging Face text model fine-tuned as an utterance classifier, fed the utterance
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
default: in a causal model only the last token has seen the whole input), the masked ``mean`` (what
sentence-transformers checkpoints such as all-MiniLM-L6-v2 were trained with), or ``target``: the mean over the
target turn's own tokens only, so context informs every token through attention but is not averaged into the
utterance's vector (with ``mean``, two context turns outweigh a short target).

Fine-tuning (``text.finetune``): ``full``; ``lora`` (peft adapters on the frozen model, the head trained in
full; checkpointed and resumed like any weight, merged into the base weights at export); ``frozen`` (only the
head trains). ``gradient_checkpointing``, ``torch_dtype`` and ``attn_implementation`` pass through to transformers.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

INPUT_FORMATS = ("sep", "sep_speaker", "past", "prompt")
POOLINGS = ("first", "last", "mean", "target")
# What a text batch hands the model (target_mask only under pooling=target): every caller passes these keys.
INPUT_KEYS = ("input_ids", "attention_mask", "target_mask")
FINETUNE = ("full", "lora", "peft", "frozen")
ADAPTERS = ("lora", "peft")  # modes that train peft adapters on a frozen base
DTYPES = ("", "float32", "bfloat16", "float16")

# A turn of the dialog: plain text, or a mapping with "text" and (optionally) "speaker", as the samples'
# json carries it (``context_prev`` / ``context_next`` entries, and the sample's own meta).
Turn = str | Mapping[str, Any]


@dataclass
class LoraSettings:
    """peft's LoRA: rank, scale (alpha / r), dropout on the adapter input, and the layers it adapts."""

    r: int = 16  # adapter rank
    alpha: int = 32  # scale: the update is B·A·alpha/r
    dropout: float = 0.05  # on the adapter input
    # []: peft's default for the model family (Llama: q_proj, v_proj; BERT: query, value); ["all-linear"]: every
    # linear layer of the model; or module names such as [q_proj, k_proj, v_proj, o_proj].
    target_modules: list[str] = field(default_factory=list)


@dataclass
class TextConfig:
    model: str = "roberta-large"  # any local path or hub name that AutoModel loads
    context: int = 2  # k neighbours on each side
    max_length: int = 512  # tokens per input (utterance with its context), truncated past this
    dropout: float = 0.1  # before the classification head
    num_classes: int = 7  # set from dataset by the run config
    pooling: str = ""  # first | last | mean | target (mean over the target turn); "": first / last (decoders)
    input_format: str = "sep"  # sep | sep_speaker | past | prompt (module docstring)
    # full: every weight trains; lora: peft's LoRA on a frozen model (+ the head); peft: any other peft adapter
    # (text.peft); frozen: only the head trains
    finetune: str = "full"
    lora: LoraSettings = field(default_factory=LoraSettings)
    # finetune=peft: a peft config as a mapping, peft_type and its fields, e.g. {peft_type: IA3, target_modules:
    # [k_proj, v_proj, down_proj], feedforward_modules: [down_proj]} (IA3, LOHA, LOKR, ADALORA, ...)
    peft: dict[str, Any] = field(default_factory=dict)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~1/3 more compute
    attn_implementation: str = ""  # "": transformers' default; eager, sdpa, flash_attention_2, ...
    torch_dtype: str = ""  # dtype the weights load in ("": float32); DeepSpeed's bf16 / fp16 casts them anyway
    padding_side: str = ""  # decoders: left | right ("": the tokenizer's); encoders always pad on the right

    def __post_init__(self) -> None:
        if self.pooling not in ("", *POOLINGS):
            raise ValueError(f"text.pooling must be one of {POOLINGS} (or empty for the model's default), "
                             f"not {self.pooling!r}")
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(f"text.input_format must be one of {INPUT_FORMATS}, not {self.input_format!r}")
        if self.context < 0:
            raise ValueError(f"text.context must be >= 0, not {self.context}")
        if self.finetune not in FINETUNE:
            raise ValueError(f"text.finetune must be one of {FINETUNE}, not {self.finetune!r}")
        if self.torch_dtype not in DTYPES:
            raise ValueError(f"text.torch_dtype must be one of {DTYPES[1:]} (or empty), not {self.torch_dtype!r}")
        if self.padding_side not in ("", "left", "right"):
            raise ValueError(f"text.padding_side must be left or right (or empty), not {self.padding_side!r}")
        if self.lora.r < 1 or self.lora.alpha <= 0 or not 0 <= self.lora.dropout < 1:
            raise ValueError("text.lora: r >= 1, alpha > 0 and 0 <= dropout < 1")
        if self.finetune == "peft":
            peft_config(self.peft)  # raises on an unknown type or field, before any launch
        elif self.peft:
            raise ValueError("text.peft is read with text.finetune=peft only")


def peft_config(spec: Mapping[str, Any]):
    """peft's config object for ``text.peft`` (a mapping with ``peft_type``); a clear error when it is wrong."""
    import peft

    spec = dict(spec)
    kind = str(spec.pop("peft_type", "")).upper()
    if not kind:
        raise ValueError("text.finetune=peft needs text.peft.peft_type (e.g. IA3, LOHA, LOKR, ADALORA)")
    types = {t.value for t in peft.PeftType}
    if kind not in types:
        raise ValueError(f"text.peft.peft_type {kind!r} is not one of peft's types {sorted(types)}")
    try:
        return peft.get_peft_config({"peft_type": kind, **spec})
    except (TypeError, ValueError) as e:
        raise ValueError(f"text.peft: {e}") from e


def _speaker_text(turn: Turn, with_speaker: bool) -> str:
    if isinstance(turn, str):
        return turn
    text, speaker = str(turn.get("text", "")), str(turn.get("speaker") or "")
    return f"{speaker}: {text}" if with_speaker and speaker else text


def _fit(assemble: Callable[[list, list[int], list], list[int]], past: list, tgt: list[int], future: list,
         max_length: int) -> tuple[list[int], list, list[int]]:
    """Drop the farthest neighbours until ``assemble(past, tgt, future)`` fits; cut the target only last.

    ``past`` is nearest last, ``future`` nearest first; both are consumed. Returns the ids, the past turns
    kept and the target's tokens kept (what the target's position follows from).
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
        tgt = tgt[:keep]
        ids = assemble(past, tgt, future)
    return ids, past, tgt


def build_input(tokenizer, target: Turn, prev: Sequence[Turn], nxt: Sequence[Turn], k: int, max_length: int,
                input_format: str = "sep", labels: Sequence[str] = ()) -> list[int]:
    """Token ids of one utterance with up to ``k`` neighbours each side, fitted to ``max_length``.

    ``labels`` (the class names) are needed by the ``prompt`` format only.
    """
    return build_input_span(tokenizer, target, prev, nxt, k, max_length, input_format, labels)[0]


def build_input_span(tokenizer, target: Turn, prev: Sequence[Turn], nxt: Sequence[Turn], k: int, max_length: int,
                     input_format: str = "sep", labels: Sequence[str] = ()) -> tuple[list[int], tuple[int, int]]:
    """``build_input``'s ids and the target turn's span ``[start, end)`` among them (its own tokens, speaker
    name included where the format writes it; no separators or tags)."""
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

    ids, past, tgt = _fit(assemble, past, enc(_speaker_text(target, with_speaker)), future, max_length)
    start = len(head) + sum(len(p) + 1 for p in past) + (1 if past else 0)
    return ids, (start, start + len(tgt))


PROMPT_INTRO = "Below is part of a conversation. The utterance between <target> and </target> is the one to judge.\n"
PROMPT_QUESTION = "Which emotion does the speaker of the target utterance express? Answer with one of: {labels}.\n"
PROMPT_ANSWER = "Answer:"


def _build_prompt(tokenizer, enc, target: Turn, past_turns: list[Turn], future_turns: list[Turn],
                  max_length: int, labels: Sequence[str]) -> tuple[list[int], tuple[int, int]]:
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

    ids, past, tgt = _fit(assemble, past, tgt, future, max_length)
    start = len(intro) + sum(len(p) for p in past) + len(open_tag)
    return ids, (start, start + len(tgt))


def is_encoder(model_config: Any) -> bool:
    """Bidirectional encoder (BERT, RoBERTa, DeBERTa, ELECTRA, ...) or decoder-only LLM?

    Encoder families are the ones transformers gives a masked-LM head; Llama, Qwen, Mistral and Gemma have none.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return getattr(model_config, "model_type", "") in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def pool(hidden: Tensor, mask: Tensor, how: str, target_mask: Tensor | None = None) -> Tensor:
    """[B, L, H] states → [B, H]: the first real token, the last real token, the masked mean, or the mean over
    the target turn's tokens (``target_mask``, 1 on them).

    Works for right and left padding alike: positions come from the mask, not from the padding side.
    """
    if how == "target":
        if target_mask is None:
            raise ValueError("pooling=target needs the target turn's token mask (target_mask), which the "
                             "text model's tokeniser makes when text.pooling=target")
        mask = target_mask
        how = "mean"
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


class TextBatcher:
    """Turns utterances (samples' json metas, or plain strings) into padded ``input_ids`` / ``attention_mask``.

    It holds only the tokenizer and settings, no weights, and pickles: loader workers run it, so tokenising
    overlaps the model's step instead of sitting in the training loop.
    """

    def __init__(self, tokenizer, config: TextConfig, max_length: int, labels: Sequence[str], decoder: bool):
        self.tokenizer, self.config, self.max_length, self.labels = tokenizer, config, max_length, list(labels)
        self.left = decoder and (config.padding_side or tokenizer.padding_side) == "left"
        pad = tokenizer.pad_token_id
        self.pad = pad if pad is not None else (tokenizer.eos_token_id or 0)  # decoders often have no pad token
        if config.input_format == "prompt" and not self.labels:
            raise ValueError("text.input_format=prompt names the label set: build the text model with labels")

    def input_ids(self, target: Turn, prev: Sequence[Turn], nxt: Sequence[Turn]) -> list[int]:
        return self.encode(target, prev, nxt)[0]

    def encode(self, target: Turn, prev: Sequence[Turn], nxt: Sequence[Turn]) -> tuple[list[int], tuple[int, int]]:
        c = self.config
        return build_input_span(self.tokenizer, target, prev, nxt, c.context, self.max_length, c.input_format,
                                self.labels)

    def pad_batch(self, ids: Sequence[Sequence[int]],
                  spans: Sequence[tuple[int, int]] | None = None) -> dict[str, Tensor]:
        """Padded ``input_ids`` and ``attention_mask``; with the targets' spans, also ``target_mask``."""
        width = max(len(i) for i in ids)
        input_ids = torch.full((len(ids), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        target = torch.zeros((len(ids), width), dtype=torch.long) if spans is not None else None
        for row, i in enumerate(ids):
            offset = width - len(i) if self.left else 0
            input_ids[row, offset : offset + len(i)] = torch.tensor(i, dtype=torch.long)
            mask[row, offset : offset + len(i)] = 1
            if target is not None:
                start, end = spans[row]
                target[row, offset + start : offset + end] = 1
        out = {"input_ids": input_ids, "attention_mask": mask}
        return {**out, "target_mask": target} if target is not None else out

    def __call__(self, targets: Sequence[Turn], prev: Sequence[Sequence[Turn]],
                 nxt: Sequence[Sequence[Turn]]) -> dict[str, Tensor]:
        encoded = [self.encode(t, p, n) for t, p, n in zip(targets, prev, nxt, strict=True)]
        spans = [s for _, s in encoded] if self.config.pooling == "target" else None
        return self.pad_batch([i for i, _ in encoded], spans)

    def from_metas(self, metas: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        targets, prev, nxt = zip(*(turns_of(m) for m in metas), strict=True)
        return self(targets, prev, nxt)


class TokenizeBatch:
    """Loader transform, run in the workers: adds ``input_ids`` / ``attention_mask`` to an utterance batch, and
    ``text_inputs`` (one padded batch per dialog) to a dialog batch, from the samples' json metas."""

    def __init__(self, batcher: TextBatcher):
        self.batcher = batcher

    @property
    def preload(self) -> tuple[str, ...]:
        """Modules the loader's forkserver imports once: unpickling the tokenizer in every worker of every epoch
        would import transformers each time (seconds per worker, minutes on a loaded machine)."""
        return (__name__, type(self.batcher.tokenizer).__module__)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        metas = batch["meta"]
        if metas and isinstance(metas[0], list):  # dialogs: a list of utterance metas each
            return {**batch, "text_inputs": [self.batcher.from_metas(m) for m in metas]}
        return {**batch, **self.batcher.from_metas(metas)}


def model_kwargs(config: TextConfig, model_config: Any) -> dict[str, Any]:
    """Keyword arguments for ``AutoModel.from_pretrained`` / ``from_config``: dtype, attention kernel, and no
    pooler for the encoders that have one (BERT, RoBERTa: a layer the sentence vector never reads)."""
    from transformers import AutoModel
    from transformers.models.auto.auto_factory import _get_model_class

    kwargs: dict[str, Any] = {}
    if config.torch_dtype:
        kwargs["dtype"] = getattr(torch, config.torch_dtype)
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    cls = _get_model_class(model_config, AutoModel._model_mapping)
    if "add_pooling_layer" in inspect.signature(cls.__init__).parameters:
        kwargs["add_pooling_layer"] = False
    return kwargs


def _lora_targets(names: Sequence[str]) -> str | list[str] | None:
    """peft takes "all-linear" as a string, module names as a list, None for the family's default."""
    names = list(names)
    if names == ["all-linear"]:
        return "all-linear"
    return names or None


class TextModel(nn.Module):
    """Text model + classification head; ``sentence_vector`` gives D_T for feature extraction.

    Built with ``from_pretrained`` for training (the fine-tuning mode applied) or directly around a plain
    ``encoder`` (exports: LoRA already merged into the weights, so they load without peft).
    """

    def __init__(self, encoder: nn.Module, tokenizer, config: TextConfig, labels: Sequence[str] = ()):
        super().__init__()
        self.encoder, self.tokenizer, self.config = encoder, tokenizer, config
        self.labels = list(labels)
        hidden = encoder.config.hidden_size
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(hidden, hidden), nn.Tanh(),
                                  nn.Dropout(config.dropout), nn.Linear(hidden, config.num_classes))
        self.max_length = min(config.max_length, _position_limit(encoder))
        self.decoder = not is_encoder(encoder.config)
        self.pooling = config.pooling or ("last" if self.decoder else "first")
        # no tokenizer: a model that is only given token ids (shape checks, benchmarks)
        self.batcher = (TextBatcher(tokenizer, config, self.max_length, self.labels, self.decoder)
                        if tokenizer is not None else None)
        self.frozen = False

    @classmethod
    def from_pretrained(cls, config: TextConfig, labels: Sequence[str] = (), **kwargs) -> TextModel:
        """The pretrained model, ready to fine-tune as ``config.finetune`` says."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(config.model)
        kwargs = {**model_kwargs(config, AutoConfig.from_pretrained(config.model)), **kwargs}
        model = cls(AutoModel.from_pretrained(config.model, **kwargs), tokenizer, config, labels)
        model.prepare_finetune()
        return model

    def prepare_finetune(self) -> None:
        """Apply gradient checkpointing and the fine-tuning mode: LoRA adapters (peft) or a frozen encoder."""
        c = self.config
        if c.gradient_checkpointing:  # non-reentrant: works with frozen inputs (LoRA) and ZeRO-3's hooks
            kwargs = {"use_reentrant": False}
            if hasattr(self.encoder, "activation_checkpointing_enable"):  # transformers >= 5.x's name
                self.encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if c.finetune == "frozen":
            self.encoder.requires_grad_(False)
            self.frozen = True
        elif c.finetune == "lora":
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(r=c.lora.r, lora_alpha=c.lora.alpha, lora_dropout=c.lora.dropout, bias="none",
                              target_modules=_lora_targets(c.lora.target_modules))
            self.encoder = get_peft_model(self.encoder, lora)
        elif c.finetune == "peft":
            from peft import get_peft_model

            self.encoder = get_peft_model(self.encoder, peft_config(c.peft))

    def merge_adapters(self) -> None:
        """Fold the adapters into the base weights (LoRA: W + B·A·alpha/r): a plain model of the base's
        architecture. Adapters that cannot be folded (prompt tuning, ...) are an error, not a silent drop."""
        from peft import PeftModel

        if isinstance(self.encoder, PeftModel):
            kind = self.encoder.peft_config["default"].peft_type
            try:
                self.encoder = self.encoder.merge_and_unload()
            except (AttributeError, NotImplementedError, ValueError) as e:
                raise ValueError(f"a {kind} adapter cannot be merged into the base weights, so it cannot be "
                                 f"exported as a plain model: {e}") from e

    def train(self, mode: bool = True) -> TextModel:
        super().train(mode)
        if self.frozen:  # a frozen encoder is a fixed feature extractor: no dropout in it
            self.encoder.eval()
        return self

    @property
    def dim(self) -> int:
        return self.encoder.config.hidden_size

    def _tokenizing(self) -> TextBatcher:
        if self.batcher is None:
            raise ValueError("this TextModel was built without a tokenizer: give it input_ids")
        return self.batcher

    def input_ids(self, target: Turn, prev: Sequence[Turn], nxt: Sequence[Turn]) -> list[int]:
        return self._tokenizing().input_ids(target, prev, nxt)

    def _to_device(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        device = next(self.parameters()).device
        return {k: v.to(device) for k, v in batch.items()}

    def tokenize(self, targets: Sequence[Turn], prev: Sequence[Sequence[Turn]],
                 nxt: Sequence[Sequence[Turn]]) -> dict[str, Tensor]:
        """A padded batch (input_ids, attention_mask); turns are strings or {"speaker", "text"} mappings."""
        return self._to_device(self._tokenizing()(targets, prev, nxt))

    def tokenize_metas(self, metas: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        """A padded batch from samples' json metas: text, speaker and the context turns with their speakers."""
        return self._to_device(self._tokenizing().from_metas(metas))

    def sentence_vector(self, input_ids: Tensor, attention_mask: Tensor, target_mask: Tensor | None = None) -> Tensor:
        kwargs = {}
        if self.decoder:  # positions count real tokens only, so left padding does not shift them
            kwargs["position_ids"] = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return pool(hidden, attention_mask, self.pooling, target_mask)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, target_mask: Tensor | None = None) -> Tensor:
        return self.head(self.sentence_vector(input_ids, attention_mask, target_mask))


def _position_limit(encoder: nn.Module) -> int:
    """RoBERTa reserves padding_idx + 1 positions, so 514 position embeddings hold 512 tokens."""
    cfg = encoder.config
    limit = getattr(cfg, "max_position_embeddings", 512)
    if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= (cfg.pad_token_id or 0) + 1
    return limit
