"""M2FNet modules: shapes at paper and tiny sizes, padding invariance, overfitting, MTCNN on a real face."""

from __future__ import annotations

import pytest
import torch
from skimage.data import astronaut

from m2fdist.models import (
    AudioConfig,
    AudioExtractor,
    DialogConfig,
    M2FNetDialog,
    TextModel,
    VisualConfig,
    VisualExtractor,
)
from m2fdist.models.text_config import TextConfig
from m2fdist.models.text_inputs import build_input
from m2fdist.models.tiny_text import build_tiny_roberta

pytestmark = pytest.mark.unit

TINY = DialogConfig(num_classes=7, dim_text=32, dim_audio=12, dim_visual=24, num_heads=4, head_hidden=32,
                    dropout=0.0, num_layers=2, num_fusion_layers=2)


def features(b: int, k: int, c: DialogConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"text": torch.randn(b, k, c.dim_text, generator=g), "audio": torch.randn(b, k, c.dim_audio, generator=g),
            "visual": torch.randn(b, k, c.dim_visual, generator=g)}


def test_dialog_model_shapes_at_paper_size():
    with torch.device("meta"):  # roberta-large widths without allocating them
        for n, m in ((1, 5), (5, 5)):  # MELD, IEMOCAP
            model = M2FNetDialog(DialogConfig(num_layers=n, num_fusion_layers=m))
            out = model(torch.ones(2, 9, dtype=torch.bool), **features(2, 9, model.config))
            assert out.shape == (2, 9, 7)
    out = M2FNetDialog(TINY)(torch.ones(3, 4, dtype=torch.bool), **features(3, 4, TINY))
    assert out.shape == (3, 4, 7)


def test_extractor_shapes_at_paper_size():
    from transformers import RobertaConfig, RobertaModel

    # roberta-large's widths (layer count does not change a shape; one layer keeps the test light)
    config = RobertaConfig(vocab_size=50265, hidden_size=1024, num_hidden_layers=1, num_attention_heads=16,
                           intermediate_size=4096, max_position_embeddings=514, pad_token_id=1, type_vocab_size=1)
    text = TextModel(RobertaModel(config, add_pooling_layer=False), None, TextConfig()).eval()
    ids = torch.randint(3, 1000, (2, 40))
    with torch.no_grad():
        assert text(ids, torch.ones_like(ids)).shape == (2, 7)
        assert text.sentence_vector(ids, torch.ones_like(ids)).shape == (2, 1024)
    assert text.max_length == 512  # 514 positions, two reserved by RoBERTa
    audio = AudioExtractor().eval()  # 8 s, window 400, hop 160, 128 mels
    with torch.no_grad():
        assert audio.spectrogram(torch.zeros(1, 16000)).shape == (1, 3, 128, 801)
        assert audio(torch.randn(2, 16000)).shape == (2, 300)
    visual = VisualExtractor().eval()
    frames = torch.randint(0, 255, (1, 15, 90, 160, 3), dtype=torch.uint8)
    with torch.no_grad():
        out = visual(frames, torch.tensor([[90, 160]]))
    assert out.shape == (1, 600) and visual.config.out_dim == 600 == DialogConfig().dim_visual


@pytest.mark.parametrize("config", [
    TINY,
    DialogConfig(**{**TINY.__dict__, "fusion": "concat"}),
    DialogConfig(**{**TINY.__dict__, "modalities": "TA"}),
    DialogConfig(**{**TINY.__dict__, "modalities": "V", "fusion": "concat"}),
])
def test_padding_never_changes_real_positions(config):
    model = M2FNetDialog(config).eval()
    short = features(1, 3, config, seed=1)
    alone = model(torch.ones(1, 3, dtype=torch.bool), **{k: v for k, v in short.items()})
    long = features(2, 6, config, seed=2)
    for key in long:  # dialog 0 = the short dialog + 3 padded utterances of garbage
        long[key][0, :3] = short[key][0]
        long[key][0, 3:] = 1e3
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 3:] = False
    batched = model(mask, **long)
    torch.testing.assert_close(batched[0, :3], alone[0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(batched).all()


def test_ablation_switches_are_checked():
    with pytest.raises(ValueError, match="subset of 'TAV'"):
        DialogConfig(modalities="TX")
    with pytest.raises(ValueError, match="fusion=concat"):
        DialogConfig(modalities="AV")
    with pytest.raises(ValueError, match="need audio"):
        M2FNetDialog(TINY)(torch.ones(1, 2, dtype=torch.bool), text=torch.zeros(1, 2, 32))


def test_standardize_applies_the_training_statistics():
    x = features(2, 4, TINY, seed=4)
    mask = torch.ones(2, 4, dtype=torch.bool)
    g = torch.Generator().manual_seed(5)
    stats = {m: (torch.randn(d, generator=g), torch.rand(d, generator=g) + 0.5)
             for m, d in (("T", TINY.dim_text), ("A", TINY.dim_audio), ("V", TINY.dim_visual))}
    stats["A"][1][0] = 0.0  # a dimension constant on the training split is left unscaled
    torch.manual_seed(0)
    model = M2FNetDialog(TINY).eval()
    plain = M2FNetDialog(TINY).eval()
    plain.load_state_dict(model.state_dict())  # same weights, identity statistics
    model.set_feature_stats(stats)
    scaled = {}
    for name, m in (("text", "T"), ("audio", "A"), ("visual", "V")):
        mean, std = stats[m]
        scaled[name] = (x[name] - mean) / torch.where(std > 0, std, torch.ones_like(std))
    torch.testing.assert_close(model(mask, **x), plain(mask, **scaled))
    assert not torch.allclose(model(mask, **x), plain(mask, **x))
    assert "standardize.V.std" in model.state_dict()  # saved with the weights, so exports apply it
    # under bf16 the statistics stay float32 (the trainer's buffer alignment skips them): a large mean
    # over a small spread survives, where bf16 would round x - mean to zero
    from m2fdist.training.trainer import _align_buffers

    for prm in model.parameters():
        prm.data = prm.data.bfloat16()
    _align_buffers(model)
    assert model.standardize["T"].mean.dtype == torch.float32
    model.standardize["T"].set_stats(torch.full((TINY.dim_text,), 1000.0), torch.full((TINY.dim_text,), 0.01))
    z = model.standardize["T"](torch.full((1, TINY.dim_text), 1000.02))
    torch.testing.assert_close(z, torch.full_like(z, 2.0), rtol=0, atol=0.1)
    assert model(mask, **x).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="modality V"):
        M2FNetDialog(TINY).set_feature_stats({"T": stats["T"], "A": stats["A"]})
    with pytest.raises(ValueError, match="12-d features"):
        M2FNetDialog(TINY).set_feature_stats({**stats, "A": stats["T"]})


def test_dialog_model_overfits_two_dialogs():
    torch.manual_seed(0)
    model = M2FNetDialog(TINY)
    x = features(2, 5, TINY, seed=3)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    labels = torch.tensor([[0, 1, 2, 3, 4], [5, 6, 0, -100, -100]])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(mask, **x).flatten(0, 1), labels.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    pred = model(mask, **x).argmax(-1)
    assert (pred[mask] == labels[mask]).all()


def test_audio_extractor():
    model = AudioExtractor(AudioConfig(seconds=2.0)).eval()
    wave = torch.randn(3, 40000) * 0.1
    lengths = torch.tensor([40000, 20000, 8000])
    out = model(wave, lengths)
    assert out.shape == (3, 300)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    # a clip's embedding does not depend on its batch's padding
    torch.testing.assert_close(model(wave[2:, :8000], lengths[2:]), out[2:], atol=1e-5, rtol=1e-4)
    spec = model.spectrogram(wave, lengths)
    assert spec.shape == (3, 3, 128, 2 * 16000 // 160 + 1)  # window 400, hop 160, 128 mels
    model.train()  # augmentation (noise, time warp) only in training
    assert not torch.allclose(model.spectrogram(wave, lengths), spec)


def _frames_with_face(t: int = 15, size: int = 256) -> torch.Tensor:
    img = torch.nn.functional.interpolate(
        torch.from_numpy(astronaut()).permute(2, 0, 1)[None].float(), size=(size, size), mode="bilinear"
    )[0].permute(1, 2, 0).round().to(torch.uint8)
    return img.expand(1, t, size, size, 3).clone()


def test_mtcnn_finds_the_astronaut_and_face_vector_follows_the_face():
    torch.manual_seed(0)
    model = VisualExtractor(VisualConfig(embed_dim=16)).eval()
    frames = _frames_with_face()
    hw = torch.tensor([[256, 256]])
    boxes = model.detect(frames, hw)
    assert all(len(b) == 1 for b in boxes[0])
    x1, y1, x2, y2 = boxes[0][0][0].tolist()
    assert 70 < x1 < x2 < 150 and 20 < y1 < y2 < 100  # her face, upper middle of the photograph
    with torch.no_grad():
        with_face = model.face_features(frames, boxes, hw)
        gone = frames.clone()
        gone[:, :, :128] = 0  # the face leaves the frame (top half blanked) in every frame
        gone_boxes = model.detect(gone, hw)
        assert all(len(b) == 0 for b in gone_boxes[0])
        without = model.face_features(gone, gone_boxes, hw)
        out = model(frames, hw)
    assert not torch.allclose(with_face, without)
    assert torch.count_nonzero(without) == 0 and torch.isfinite(without).all()  # no face: zeros, never NaN
    assert out.shape == (1, 32) and torch.isfinite(out).all()
    scene_only = VisualExtractor(VisualConfig(embed_dim=16, branches="scene")).eval()
    assert scene_only(frames, hw).shape == (1, 16)


def test_visual_features_ignore_frame_padding():
    model = VisualExtractor(VisualConfig(embed_dim=8)).eval()
    small = _frames_with_face(t=3, size=128)
    padded = torch.zeros(1, 3, 200, 180, 3, dtype=torch.uint8)
    padded[:, :, :128, :128] = small
    hw = torch.tensor([[128, 128]])
    with torch.no_grad():
        torch.testing.assert_close(model.scene_features(padded, hw), model.scene_features(small, hw))


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory) -> TextModel:
    words = "oh my god you know wonderful great love hate stop it now sorry sad scared gross eww what really".split()
    texts = [" ".join(words[i : i + 5]) for i in range(len(words))] * 10
    path = build_tiny_roberta(tmp_path_factory.mktemp("roberta"), texts, vocab_size=400, hidden_size=32)
    return TextModel.from_pretrained(TextConfig(model=str(path), context=2, num_classes=7))


def test_text_model_loads_from_a_local_path_and_classifies(tiny_text):
    batch = tiny_text.tokenize(["oh my god", "stop it"], [["you know"], []], [["really"], ["sorry"]])
    assert tiny_text(**batch).shape == (2, 7)
    assert tiny_text.sentence_vector(**batch).shape == (2, 32)


def test_context_is_cut_farthest_first_and_never_the_target(tiny_text):
    tok = tiny_text.tokenizer
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    target = "wonderful great love"
    prev, nxt = ["p2 far away words here", "p1 near"], ["n1 near", "n2 far away words here"]
    full = build_input(tok, target, prev, nxt, k=2, max_length=512)
    cls, sep = tok.cls_token_id, tok.sep_token_id
    assert full == [cls, *enc(prev[0]), sep, *enc(prev[1]), sep, sep, *enc(target), sep, sep,
                    *enc(nxt[0]), sep, *enc(nxt[1]), sep]
    # shrink the budget step by step: the farthest neighbours go first, past before future at equal distance
    lengths = {}
    for limit in range(len(full), 2, -1):
        ids = build_input(tok, target, prev, nxt, k=2, max_length=limit)
        assert len(ids) <= limit
        text = tok.decode(ids)
        lengths[limit] = ("p2" in text, "n2" in text, "p1" in text, "n1" in text)
        if limit >= len(enc(target)) + 2:
            assert tok.decode(enc(target)) in text  # the target is whole while it fits at all
    order = [lengths[k] for k in sorted(lengths, reverse=True)]
    dropped = []
    for before, after in zip(order, order[1:], strict=False):
        for name, b, a in zip(("p2", "n2", "p1", "n1"), before, after, strict=True):
            if b and not a:
                dropped.append(name)
    assert dropped == ["p2", "n2", "p1", "n1"]
    with pytest.raises(ValueError, match="cannot hold"):
        build_input(tok, target, prev, nxt, k=2, max_length=2)
    assert build_input(tok, target, prev, nxt, k=1, max_length=512) == [
        cls, *enc(prev[1]), sep, sep, *enc(target), sep, sep, *enc(nxt[0]), sep]
