"""What the text model reads: an utterance with its dialog context, as token ids, and the picklable batcher that
loader workers run so tokenising overlaps training.

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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from m2fdist.models.text_config import INPUT_FORMATS, TextConfig, Turn


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


def build_input(tokenizer: Any, target: Turn, prev: Sequence[Turn], nxt: Sequence[Turn], k: int, max_length: int,
                input_format: str = "sep", labels: Sequence[str] = ()) -> list[int]:
    """Token ids of one utterance with up to ``k`` neighbours each side, fitted to ``max_length``.

    ``labels`` (the class names) are needed by the ``prompt`` format only.
    """
    return build_input_span(tokenizer, target, prev, nxt, k, max_length, input_format, labels)[0]


def build_input_span(tokenizer: Any, target: Turn, prev: Sequence[Turn], nxt: Sequence[Turn], k: int, max_length: int,
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


def turns_of(meta: Mapping[str, Any]) -> tuple[Turn, list[Turn], list[Turn]]:
    """(target, previous turns, next turns) of a sample's json meta, speakers included."""
    return meta, list(meta.get("context_prev", [])), list(meta.get("context_next", []))


class TextBatcher:
    """Turns utterances (samples' json metas, or plain strings) into padded ``input_ids`` / ``attention_mask``.

    It holds only the tokenizer and settings, no weights, and pickles: loader workers run it, so tokenising
    overlaps the model's step instead of sitting in the training loop.
    """
    def __init__(self, tokenizer: Any, config: TextConfig, max_length: int, labels: Sequence[str], decoder: bool):
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
