"""Text model: a Hugging Face text model fine-tuned as an utterance classifier, fed the utterance
with up to k previous and k next utterances of its dialog.

Its input (the utterance with its dialog context, in one of four formats) is built by
:mod:`m2fdist.models.text_inputs`.

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
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from m2fdist.models.device import device_of
from m2fdist.models.pretrained import load_config, load_encoder, load_tokenizer
from m2fdist.models.text_config import POOLINGS, TextConfig, Turn, peft_config
from m2fdist.models.text_inputs import TextBatcher


def is_encoder(model_config: Any) -> bool:
    """Bidirectional encoder (BERT, RoBERTa, DeBERTa, ELECTRA, ...) or decoder-only LLM?

    Encoder families are the ones transformers gives a masked-LM head; Llama, Qwen, Mistral and Gemma have none.
    """
    # here, not at the top: transformers costs seconds; audio, visual, fusion ranks never need it
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


def model_kwargs(config: TextConfig, model_config: Any) -> dict[str, Any]:
    """Keyword arguments for ``AutoModel.from_pretrained`` / ``from_config``: dtype, attention kernel, and no
    pooler for the encoders that have one (BERT, RoBERTa: a layer the sentence vector never reads)."""
    # here, not at the top: transformers costs seconds; audio, visual, fusion ranks never need it
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
    def __init__(self, encoder: nn.Module, tokenizer: Any, config: TextConfig, labels: Sequence[str] = ()):
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
    def from_pretrained(cls, config: TextConfig, labels: Sequence[str] = (), **kwargs: Any) -> TextModel:
        """The pretrained model, ready to fine-tune as ``config.finetune`` says."""
        tokenizer = load_tokenizer(config.model)
        kwargs = {**model_kwargs(config, load_config(config.model)), **kwargs}
        model = cls(load_encoder(config.model, **kwargs), tokenizer, config, labels)
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
            # here, not at the top: peft (and transformers) only for adapter runs
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(r=c.lora.r, lora_alpha=c.lora.alpha, lora_dropout=c.lora.dropout, bias="none",
                              target_modules=_lora_targets(c.lora.target_modules))
            self.encoder = get_peft_model(self.encoder, lora)
        elif c.finetune == "peft":
            # here, not at the top: peft (and transformers) only for adapter runs
            from peft import get_peft_model

            self.encoder = get_peft_model(self.encoder, peft_config(c.peft))

    def merge_adapters(self) -> None:
        """Fold the adapters into the base weights (LoRA: W + B·A·alpha/r): a plain model of the base's
        architecture. Adapters that cannot be folded (prompt tuning, ...) are an error, not a silent drop."""
        # here, not at the top: peft (and transformers) only for adapter runs
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
        device = device_of(self)
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

    def sentence_vectors(self, metas: Sequence[Mapping[str, Any]], inputs: dict[str, Tensor] | None = None) -> Tensor:
        """D_T of utterances, each with its neighbours' text from its sample's json: what extraction writes and
        prediction fuses. ``inputs``: the token ids a loader worker already made (``TokenizeBatch``); without
        them the metas are tokenised here, in the model's own input format (speakers included)."""
        inputs = self._to_device(inputs) if inputs else self.tokenize_metas(metas)
        return self.sentence_vector(**inputs)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, target_mask: Tensor | None = None) -> Tensor:
        return self.head(self.sentence_vector(input_ids, attention_mask, target_mask))


def _position_limit(encoder: nn.Module) -> int:
    """RoBERTa reserves padding_idx + 1 positions, so 514 position embeddings hold 512 tokens."""
    cfg = encoder.config
    limit = getattr(cfg, "max_position_embeddings", 512)
    if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= (cfg.pad_token_id or 0) + 1
    return limit
