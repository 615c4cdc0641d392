"""Losses: the classifiers' cross-entropy (class weights, focal), and the feature extractors' loss:
adaptive-margin triplet loss plus VICReg's variance and covariance terms, and in-batch triplet mining from
emotion labels.

Classifier stages (text, fusion) all call :func:`classification_loss`: class imbalance (MELD is 47% neutral,
fear and disgust under 3% each) is handled here once, by per-class weights (:func:`class_weights`, from the
training split's label counts) and an optional focal term.

L = λ1·L_AMT + λ2·L_Cov + λ3·L_Var with (λ1, λ2, λ3) = (20, 5, 1), the weights of the paper's printed
formula. L_Var keeps VICReg's hinge max(0, ·), which the article's print drops: without it the loss
would reward unbounded variance.

Implemented exactly as specified, with one property worth knowing: ∂L_AMT/∂D(a,n) = −1/2 + 8·e^(4·D(a,n) − 4)
turns positive once D(a,n) > 1 − ln(16)/4 ≈ 0.31, and ∂L_AMT/∂D(a,p) = 1 − 8·e^(−4·D(a,p)) is negative
below D(a,p) = ln(8)/4 ≈ 0.52. On its own the term settles near those distances instead of pushing
negatives away without bound; the weights are configurable for anyone who wants to rebalance it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

VAR_EPS = 1e-4
WEIGHTINGS = ("none", "inverse", "sqrt_inverse")


def class_weights(spec: str | Sequence[float], counts: Sequence[int]) -> list[float] | None:
    """Per-class loss weights: None for ``"none"``, else one weight per class.

    ``"inverse"`` weighs class c by N / (C·n_c) (scikit-learn's "balanced"), ``"sqrt_inverse"`` by the square
    root of that, rescaled so the training samples' mean weight is 1 in both cases; a list is taken as given.
    A class absent from training gets weight 0: it is never a target, so its weight never counts.
    Raises ValueError for an unknown name or a list that is not one positive number per class.
    """
    if isinstance(spec, str):
        if spec not in WEIGHTINGS:
            raise ValueError(f"class weights must be one of {', '.join(WEIGHTINGS)} or a list, not {spec!r}")
        if spec == "none":
            return None
        n = torch.tensor([float(c) for c in counts])
        if (n < 0).any() or n.sum() == 0:
            raise ValueError(f"label counts {list(counts)} hold no training sample")
        raw = torch.where(n > 0, n.sum() / (len(n) * n.clamp(min=1)), torch.zeros_like(n))
        if spec == "sqrt_inverse":
            raw = raw.sqrt()
        return (raw * n.sum() / (raw * n).sum()).tolist()
    weights = [float(w) for w in spec]
    if len(weights) != len(counts) or any(w <= 0 for w in weights):
        raise ValueError(f"class weights {weights}: need {len(counts)} positive numbers, one per class")
    return weights


def classification_loss(logits: Tensor, labels: Tensor, weight: Tensor | None = None, focal_gamma: float = 0.0,
                        ignore_index: int = -100) -> Tensor:
    """Cross-entropy of [N, C] logits (float32), optionally class-weighted and focal.

    Focal loss (Lin et al., 2017) scales each sample's term by (1 − p_y)^γ, so confidently right samples (the
    many easy neutrals) count less. Terms are averaged with the class weights as cross-entropy does,
    Σ w_y·(1 − p_y)^γ·(−log p_y) / Σ w_y over the labelled rows: γ = 0 is exactly ``F.cross_entropy``.
    A batch with no labelled row gives a zero that still reaches every logit (each rank must backward).
    """
    logits = logits.float()
    keep = labels != ignore_index
    if not bool(keep.any()):
        return logits.sum() * 0.0
    logits, labels = logits[keep], labels[keep]
    if focal_gamma == 0.0:
        return F.cross_entropy(logits, labels, weight=weight)
    logp = F.log_softmax(logits, dim=-1).gather(1, labels[:, None])[:, 0]
    terms = -((1 - logp.exp()) ** focal_gamma) * logp
    w = weight[labels] if weight is not None else torch.ones_like(terms)
    return (w * terms).sum() / w.sum()


def _distance(x: Tensor, y: Tensor) -> Tensor:
    """Euclidean distance per row."""
    return torch.linalg.vector_norm(x - y, dim=-1)


def adaptive_margin_triplet_loss(anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
    """Mean over triplets of D(a,p) − (D(a,n) + D(p,n))/2 + m_sim + m_dissim.

    m_sim = 1 + 2/exp(4·D(a,p)) shrinks as the positive drifts away, and m_dissim = 1 + 2/exp(4 − 4·D(a,n))
    grows as the negative drifts away, so the margins adapt to how well each triplet is already separated.
    """
    d_ap = _distance(anchor, positive)
    d_an = _distance(anchor, negative)
    d_pn = _distance(positive, negative)
    m_sim = 1 + 2 / torch.exp(4 * d_ap)
    m_dissim = 1 + 2 / torch.exp(4 - 4 * d_an)
    return (d_ap - (d_an + d_pn) / 2 + m_sim + m_dissim).mean()


def variance_loss(z: Tensor, eps: float = VAR_EPS) -> Tensor:
    """(1/d)·Σ_j max(0, 1 − sqrt(Var(z_:,j) + eps)): keeps every embedding dimension in use."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return torch.relu(1 - std).mean()


def covariance_loss(z: Tensor) -> Tensor:
    """(1/d)·Σ_{i≠j} Cov(z)_ij²: decorrelates the embedding dimensions."""
    n, d = z.shape
    zc = z - z.mean(dim=0)
    cov = (zc.T @ zc) / (n - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return off.pow(2).sum() / d


def feature_extractor_loss(
    anchor: Tensor, positive: Tensor, negative: Tensor, weights: tuple[float, float, float] = (20.0, 5.0, 1.0)
) -> Tensor:
    """λ1·L_AMT + λ2·L_Cov + λ3·L_Var, the variance and covariance terms summed over the three batches."""
    w_amt, w_cov, w_var = weights
    batches = (anchor, positive, negative)
    l_cov = sum(covariance_loss(z) for z in batches)
    l_var = sum(variance_loss(z) for z in batches)
    return w_amt * adaptive_margin_triplet_loss(anchor, positive, negative) + w_cov * l_cov + w_var * l_var


def mine_triplets(
    labels: Tensor,
    embeddings: Tensor | None = None,
    mode: str = "all",
    max_triplets: int | None = None,
    margin: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Index triples (a, p, n) in the batch: p shares a's label (p ≠ a), n does not.

    ``mode="all"`` keeps every valid triplet; ``"semihard"`` keeps those whose negative is farther than
    the positive but within ``margin`` of it (FaceNet's semi-hard negatives), falling back to all valid
    triplets when a batch has none. ``max_triplets`` subsamples uniformly to bound the cost.
    """
    if mode not in ("all", "semihard"):
        raise ValueError(f"triplet mining mode must be 'all' or 'semihard', not {mode!r}")
    labels = labels.reshape(-1)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    valid = (same & ~eye)[:, :, None] & ~same[:, None, :]  # [a, p, n]
    if mode == "semihard":
        if embeddings is None:
            raise ValueError("semi-hard mining needs the embeddings")
        with torch.no_grad():
            d = torch.cdist(embeddings, embeddings)
            d_ap, d_an = d[:, :, None], d[:, None, :]
            semi = valid & (d_an > d_ap) & (d_an < d_ap + margin)
        if semi.any():
            valid = semi
    a, p, n = valid.nonzero(as_tuple=True)
    if max_triplets is not None and len(a) > max_triplets:
        keep = torch.randperm(len(a), generator=generator, device="cpu")[:max_triplets].to(a.device)
        a, p, n = a[keep], p[keep], n[keep]
    return a, p, n
