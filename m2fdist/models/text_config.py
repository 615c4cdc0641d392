"""The text model's settings (``text.*``) and the peft adapter config they name; no torch at import.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
    # ZeRO-3 only: build and load the model partitioned (deepspeed.zero.Init), each rank holding ~1/world of it
    # from the start; false reads the whole model on every rank before DeepSpeed partitions it
    partition_at_load: bool = True

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


def peft_config(spec: Mapping[str, Any]) -> Any:
    """peft's config object for ``text.peft`` (a mapping with ``peft_type``); a clear error when it is wrong."""
    # here, not at the top: peft (and transformers) only for adapter runs
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
