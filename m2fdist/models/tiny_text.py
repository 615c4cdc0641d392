"""A tiny random RoBERTa with a tokenizer trained locally, saved where ``from_pretrained`` loads it.

Nothing can come from the model hub here (tests, CI, the demo), so the real loading path
(``AutoTokenizer`` / ``AutoModel.from_pretrained(path)``) is exercised on a checkpoint built from the
corpus's own text: a byte-level BPE (the tokenizer family roberta-large uses) and a small RobertaConfig.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


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
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

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
