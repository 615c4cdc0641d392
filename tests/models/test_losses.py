"""Losses against numbers worked out by hand, gradcheck in float64, and triplet mining."""

from __future__ import annotations

import math

import pytest
import torch

from m2fdist.models.losses import (
    adaptive_margin_triplet_loss,
    class_weights,
    classification_loss,
    covariance_loss,
    feature_extractor_loss,
    mine_triplets,
    variance_loss,
)

pytestmark = pytest.mark.unit

# Two triplets whose distances are easy by hand:
#   1) a=(0,0) p=(0.3,0.4) n=(0.6,0.8): D(a,p)=0.5, D(a,n)=1, D(p,n)=0.5
#      0.5 - (1 + 0.5)/2 + (1 + 2e^-2) + (1 + 2e^0) = 4 + 2e^-2 - 0.25 = 4.02067056647
#   2) a=(1,0) p=(1,0.25) n=(1,1): D(a,p)=0.25, D(a,n)=1, D(p,n)=0.75
#      0.25 - (1 + 0.75)/2 + (1 + 2e^-1) + (1 + 2e^0) = 3.375 + 2e^-1 = 4.11075888234
A = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
P = torch.tensor([[0.3, 0.4], [1.0, 0.25]])
N = torch.tensor([[0.6, 0.8], [1.0, 1.0]])
AMT_1 = 3.75 + 2 * math.exp(-2)
AMT_2 = 3.375 + 2 * math.exp(-1)


def test_adaptive_margin_triplet_loss_by_hand():
    assert adaptive_margin_triplet_loss(A[:1], P[:1], N[:1]).item() == pytest.approx(4.02067056647, abs=1e-6)
    assert adaptive_margin_triplet_loss(A[1:], P[1:], N[1:]).item() == pytest.approx(4.11075888234, abs=1e-6)
    assert adaptive_margin_triplet_loss(A, P, N).item() == pytest.approx((AMT_1 + AMT_2) / 2, abs=1e-6)


def test_variance_and_covariance_by_hand():
    # columns: var 2 (std ~1.414, above 1: no penalty) and var 0 (std sqrt(1e-4) = 0.01: penalty 0.99); / d = 2
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    assert variance_loss(z).item() == pytest.approx(0.99 / 2, abs=1e-6)
    # cov = [[2, 2], [2, 2]]: off-diagonal squares 4 + 4 = 8, / d = 2
    z = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    assert covariance_loss(z).item() == pytest.approx(4.0, abs=1e-6)
    # uncorrelated unit-variance columns cost nothing
    z = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]]) * math.sqrt(0.75)
    assert covariance_loss(z).item() == pytest.approx(0.0, abs=1e-7)
    assert variance_loss(z).item() == pytest.approx(0.0, abs=1e-7)


def test_feature_extractor_loss_weights():
    amt = adaptive_margin_triplet_loss(A, P, N)
    cov = sum(covariance_loss(z) for z in (A, P, N))
    var = sum(variance_loss(z) for z in (A, P, N))
    assert feature_extractor_loss(A, P, N).item() == pytest.approx((20 * amt + 5 * cov + var).item(), rel=1e-6)
    assert feature_extractor_loss(A, P, N, weights=(1, 0, 0)).item() == pytest.approx(amt.item(), rel=1e-6)
    assert feature_extractor_loss(A, P, N, weights=(0, 5, 1)).item() == pytest.approx((5 * cov + var).item(), rel=1e-6)


def test_gradcheck_float64():
    torch.manual_seed(0)
    a, p, n = (torch.randn(5, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(adaptive_margin_triplet_loss, (a, p, n))
    assert torch.autograd.gradcheck(lambda x, y, z: feature_extractor_loss(x, y, z), (a, p, n))
    assert torch.autograd.gradcheck(variance_loss, (a * 0.3,))
    assert torch.autograd.gradcheck(covariance_loss, (a,))


def test_mining_all_valid_triplets():
    labels = torch.tensor([0, 0, 1, 1, 1])
    a, p, n = mine_triplets(labels)
    # label 0: 2 anchors x 1 positive x 3 negatives; label 1: 3 anchors x 2 positives x 2 negatives
    assert len(a) == 2 * 1 * 3 + 3 * 2 * 2
    assert (labels[a] == labels[p]).all() and (labels[a] != labels[n]).all() and (a != p).all()
    assert len(set(zip(a.tolist(), p.tolist(), n.tolist(), strict=True))) == len(a)
    a, _, _ = mine_triplets(labels, max_triplets=5, generator=torch.Generator().manual_seed(0))
    assert len(a) == 5
    assert len(mine_triplets(torch.tensor([3, 3, 3]))[0]) == 0  # no negatives, no triplet


def test_mining_semihard():
    labels = torch.tensor([0, 0, 1, 1])
    emb = torch.tensor([[0.0], [1.0], [1.5], [5.0]])
    a, p, n = mine_triplets(labels, emb, mode="semihard", margin=1.0)
    d = torch.cdist(emb, emb)
    assert len(a) > 0
    assert ((d[a, n] > d[a, p]) & (d[a, n] < d[a, p] + 1.0)).all()
    with pytest.raises(ValueError, match="needs the embeddings"):
        mine_triplets(labels, mode="semihard")
    with pytest.raises(ValueError, match="'all' or 'semihard'"):
        mine_triplets(labels, mode="hard")


def test_printed_amt_settles_with_negatives_no_farther_than_positives():
    """Why `triplet.ce_weight` exists: gradient descent on the printed L_AMT over the three distances
    (D(p,n) = D(a,n), as for two tight classes) stops at D(a,p) = ln(8)/4 ≈ 0.52 and D(a,n) = 1 − ln(8)/4 ≈ 0.48,
    not at a separation: the loss itself does not ask for negatives to be farther than positives."""
    d_ap = torch.tensor(1.0, requires_grad=True)
    d_an = torch.tensor(0.1, requires_grad=True)
    opt = torch.optim.SGD([d_ap, d_an], lr=0.05)
    for _ in range(2000):
        loss = d_ap - d_an + 1 + 2 / torch.exp(4 * d_ap) + 1 + 2 / torch.exp(4 - 4 * d_an)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert d_ap.item() == pytest.approx(math.log(8) / 4, abs=1e-3)
    assert d_an.item() == pytest.approx(1 - math.log(8) / 4, abs=1e-3)
    assert d_an.item() < d_ap.item()


def test_extractor_ce_head_adds_cross_entropy_over_real_samples_only(tmp_path):
    import json

    from m2fdist.common.labels import LABELS
    from m2fdist.config.errors import ConfigError
    from m2fdist.config.load import load_config
    from m2fdist.training.stages import AudioStage

    # the config checks that the shards it names exist and are for its dataset
    index = {"format": 1, "dataset": "meld", "label_names": list(LABELS["meld"]),
             "splits": {s: {} for s in ("train", "dev", "test")}}
    (tmp_path / "index.json").write_text(json.dumps(index))

    def stage(*extra: str) -> AudioStage:
        return AudioStage(load_config("configs/tiny/audio.yaml", [f"data.shards={tmp_path}", "audio.seconds=0.5",
                                                                  "audio.augment=false", *extra]))

    with pytest.raises(ConfigError, match="ce_weight"):
        stage("triplet.ce_weight=-1")

    torch.manual_seed(0)
    batch = {"audio": torch.randn(4, 8000) * 0.1, "audio_len": torch.tensor([8000, 8000, 4000, 8000]),
             "labels": torch.tensor([0, 1, 0, 2]), "valid": torch.tensor([True, True, True, False])}
    plain = stage()
    assert not hasattr(plain.build_model(), "ce_heads")  # the paper's loss by default
    with_ce = stage("triplet.ce_weight=2.0", "triplet.ce_temperature=0.5")
    model = with_ce.build_model().eval()
    assert [tuple(h.weight.shape) for h in model.ce_heads] == [(7, 16)]
    emb = model(batch["audio"], batch["audio_len"])
    triplet_only = plain.loss(model, batch)
    logits = model.ce_heads[0](emb) / 0.5
    expected = triplet_only + 2.0 * torch.nn.functional.cross_entropy(logits[:3], batch["labels"][:3])
    torch.testing.assert_close(with_ce.loss(model, batch), expected)
    # an export rebuilds the heads through build_model, so the state dicts match key for key
    assert set(with_ce.build_model().state_dict()) == set(model.state_dict())


MELD_TRAIN_COUNTS = [4710, 1743, 1205, 1109, 683, 271, 268]


def test_class_weights_from_label_counts():
    n = torch.tensor(MELD_TRAIN_COUNTS, dtype=torch.float64)
    for spec, power in (("inverse", 1.0), ("sqrt_inverse", 0.5)):
        w = torch.tensor(class_weights(spec, MELD_TRAIN_COUNTS), dtype=torch.float64)
        assert (w * n).sum() / n.sum() == pytest.approx(1.0)  # a training sample weighs 1 on average
        assert w[5] / w[0] == pytest.approx((4710 / 271) ** power)  # disgust vs neutral
    assert class_weights("none", MELD_TRAIN_COUNTS) is None
    assert class_weights([1, 2, 3], [5, 0, 5]) == [1.0, 2.0, 3.0]
    assert class_weights("inverse", [5, 0, 5])[1] == 0.0  # absent from training: never a target
    for bad in ("balanced", [1, 2], [1, 0, 1]):
        with pytest.raises(ValueError):
            class_weights(bad, [5, 0, 5])


def test_classification_loss_is_cross_entropy_at_gamma_0_and_focal_above():
    torch.manual_seed(0)
    logits = torch.randn(6, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2, -100, 1, 0])
    w = torch.tensor([0.5, 2.0, 1.0])
    ref = torch.nn.functional.cross_entropy(logits, labels, weight=w, ignore_index=-100)
    assert classification_loss(logits, labels, w).item() == pytest.approx(ref.item(), rel=1e-6)
    # γ = 2 by hand: Σ w_y (1 - p_y)² (-log p_y) / Σ w_y over the labelled rows
    p = logits.softmax(-1).detach()
    rows = [0, 1, 2, 4, 5]
    terms = [w[labels[i]] * (1 - p[i, labels[i]]) ** 2 * -torch.log(p[i, labels[i]]) for i in rows]
    expected = sum(terms) / sum(w[labels[i]] for i in rows)
    assert classification_loss(logits, labels, w, focal_gamma=2.0).item() == pytest.approx(expected.item(), rel=1e-5)
    # the focal term shrinks an easy (confident, right) sample's share more than a hard one's
    easy, hard = torch.tensor([[5.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    y = torch.tensor([0])
    ratio = lambda x: (classification_loss(x, y, focal_gamma=2.0) / classification_loss(x, y)).item()  # noqa: E731
    assert ratio(easy) < 0.001 < ratio(hard) < 1
    # a batch with no label (all padding) still backpropagates, to zero
    zero = classification_loss(logits, torch.full((6,), -100))
    zero.backward()
    assert zero.item() == 0.0 and logits.grad is not None and not logits.grad.any()


def test_stage_loss_weights_come_from_the_shards_index(meld_shards):
    from m2fdist.config.errors import ConfigError
    from m2fdist.config.load import load_config
    from m2fdist.training.stages.text import TextStage

    shards, index = meld_shards
    counts = [index["splits"]["train"]["labels"][n] for n in index["label_names"]]
    logits, labels = torch.randn(8, 7), torch.tensor([0, 1, 2, 3, 4, 5, 6, 0])
    for spec in ("sqrt_inverse", [1, 2, 3, 4, 5, 6, 7]):
        cfg = load_config("configs/tiny/text.yaml", [f"data.shards={shards}", f"train.class_weights={spec}",
                                                     "train.focal_gamma=1.5"])
        got = TextStage(cfg).classification_loss(logits, labels)
        want = classification_loss(logits, labels, torch.tensor(class_weights(spec, counts)), focal_gamma=1.5)
        assert got.item() == pytest.approx(want.item(), rel=1e-6)
    for bad in ("train.class_weights=balanced", "train.class_weights=[1,2]", "train.focal_gamma=-1"):
        with pytest.raises(ConfigError, match="class_weights|focal_gamma"):
            load_config("configs/tiny/text.yaml", [f"data.shards={shards}", bad])
