"""Tiny random text models (a RoBERTa, a Llama-family decoder) with tokenizers trained locally, saved where
``from_pretrained`` loads them.

Nothing can come from the model hub here (tests, CI, the demo), so the real loading path
(``AutoTokenizer`` / ``AutoModel.from_pretrained(path)``) is exercised on a checkpoint built from the
corpus's own text: a byte-level BPE (the tokenizer family roberta-large uses) and a small RobertaConfig.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaModel,
    RobertaTokenizer,
)


def build_tiny_roberta(
    out: Path,
    texts: Iterable[str],
    vocab_size: int = 1000,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 130,
    seed: int = 0,
) -> Path:
    """Train a byte-level BPE on ``texts``, build a random RoBERTa of the given size, save both to ``out``."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=1, special_tokens=specials)
    vocab_file, merges_file = bpe.save_model(str(out))
    # transformers 5 takes the vocabulary and merges themselves (a path is read as a vocab *name*).
    lines = Path(merges_file).read_text().splitlines()
    merges = [tuple(ln.split(" ")) for ln in lines if ln and not ln.startswith("#")]
    tokenizer = RobertaTokenizer(
        vocab=json.loads(Path(vocab_file).read_text()), merges=merges, model_max_length=max_positions - 2
    )
    tokenizer.save_pretrained(out)
    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, intermediate_size=4 * hidden_size, max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, type_vocab_size=1,
    )
    torch.manual_seed(seed)
    RobertaModel(config, add_pooling_layer=False).save_pretrained(out)
    return out


def build_tiny_llama(
    out: Path,
    texts: Iterable[str],
    vocab_size: int = 1000,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 0,
    max_positions: int = 512,
    padding_side: str = "right",
    seed: int = 0,
) -> Path:
    """A tiny random Llama-family decoder with a byte-level BPE trained on ``texts``, saved to ``out``.

    Built like a real decoder checkpoint: a ``LlamaForCausalLM`` (AutoModel reads its ``model.`` part), grouped
    query attention, a tokenizer with BOS / EOS (BOS added in front, as Llama 3's is) and no pad token, so the
    text model's pad handling is what a real Llama / Qwen / Mistral checkpoint meets.
    """

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bos, eos, unk = "<|begin_of_text|>", "<|end_of_text|>", "<|unk|>"
    bpe = Tokenizer(models.BPE(unk_token=unk))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=[bos, eos, unk],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(list(texts), trainer)
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bpe.token_to_id(bos))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=bos, eos_token=eos, unk_token=unk,
                                        model_max_length=max_positions, padding_side=padding_side)
    tokenizer.save_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=None, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    return out
