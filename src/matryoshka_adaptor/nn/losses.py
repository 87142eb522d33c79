"""Losses of the Matryoshka-Adaptor, as pure functions of tensors.

Notation follows Yoon et al. (2024): for a Matryoshka dim m, ``cos_m(a, b)`` is the
cosine similarity of the m-prefixes of a and b. Targets are cosines of the
*original full-dimension* embeddings. Every loss averages over all dims in one
vectorised pass: the dot products of consecutive dim blocks are computed once
and accumulated with a cumulative sum, so the cost is one full matrix product
whatever the number of dims.

Losses are means rather than the paper's sums, so that their scale does not
depend on the batch size or k; the weights alpha, beta, gamma keep their roles.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

_EPS = 1e-8


def _dims_index(dims: Sequence[int], device) -> torch.Tensor:
    return torch.as_tensor([m - 1 for m in dims], device=device, dtype=torch.long)


def prefix_norms(x: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """Norms of the m-prefixes of each row: shape (len(dims), *x.shape[:-1])."""
    sq = x.pow(2).cumsum(-1).index_select(-1, _dims_index(dims, x.device))
    return sq.clamp_min(_EPS).sqrt().movedim(-1, 0)


def prefix_cosine_matrix(a: torch.Tensor, b: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """All-pairs prefix cosines: (len(dims), n_a, n_b), entry [t, i, j] = cos_{dims[t]}(a_i, b_j)."""
    bounds = [0, *dims]
    blocks = torch.stack([a[:, s:e] @ b[:, s:e].T for s, e in zip(bounds[:-1], bounds[1:])])
    dots = blocks.cumsum(0)
    na = prefix_norms(a, dims)
    nb = prefix_norms(b, dims)
    return dots / (na[:, :, None] * nb[:, None, :])


def prefix_cosine_rows(a: torch.Tensor, b: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """Prefix cosines of each row of a with its own k rows of b.

    a: (n, d), b: (n, k, d) -> (len(dims), n, k).
    """
    dots = (a[:, None, :] * b).cumsum(-1).index_select(-1, _dims_index(dims, a.device)).movedim(-1, 0)
    na = prefix_norms(a, dims)  # (M, n)
    nb = prefix_norms(b, dims)  # (M, n, k)
    return dots / (na[:, :, None] * nb)


def topk_similarity_loss(
    anchors: torch.Tensor, neighbors: torch.Tensor, target: torch.Tensor, dims: Sequence[int]
) -> torch.Tensor:
    """L_topk: mean over m, i and j in NN_k(i) of |cos_m(e'_i, e'_j) - cos(e_i, e_j)|.

    anchors (n, d) adapted; neighbors (n, k, d) adapted; target (n, k) full-dim cosines of the originals.
    """
    return (prefix_cosine_rows(anchors, neighbors, dims) - target[None]).abs().mean()


def pairwise_similarity_loss(adapted: torch.Tensor, target: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """L_pair: mean over m and pairs i != j in the batch of |cos_m(e'_i, e'_j) - cos(e_i, e_j)|."""
    n = adapted.shape[0]
    if n < 2:
        return adapted.new_zeros(())
    diff = (prefix_cosine_matrix(adapted, adapted, dims) - target[None]).abs()
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=adapted.device)
    return diff[:, off_diagonal].mean()


def reconstruction_loss(adapted: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """L_rec: mean absolute difference |e' - e| (keeps the adaptor close to the input)."""
    return (adapted - original).abs().mean()


def listwise_distillation_loss(
    anchors: torch.Tensor,
    pool: torch.Tensor,
    target: torch.Tensor,
    dims: Sequence[int],
    *,
    temperature: float = 0.05,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Rank-aware extension (not in the paper): KL(softmax(target/T) || softmax(cos_m/T)) per anchor.

    Every candidate in ``pool`` is scored for every anchor; the target distribution
    comes from the full-dim cosines, so the m-prefix must reproduce the *ordering*
    at the top of each list rather than raw cosine values. ``mask`` (n, p) marks
    valid candidates (False for the anchor itself). ``reduction="mean"`` returns the mean
    over dims and anchors (a scalar); ``"per_dim"`` the mean over anchors for each dim, shape (M,).
    """
    if reduction not in ("mean", "per_dim"):
        raise ValueError(f"reduction must be 'mean' or 'per_dim', got {reduction!r}")
    logits = prefix_cosine_matrix(anchors, pool, dims) / temperature  # (M, n, p)
    target_logits = target / temperature
    if mask is not None:
        logits = logits.masked_fill(~mask[None], float("-inf"))
        target_logits = target_logits.masked_fill(~mask, float("-inf"))
    p_target = F.softmax(target_logits, dim=-1)
    log_p_target = F.log_softmax(target_logits, dim=-1)
    log_p = F.log_softmax(logits, dim=-1)
    terms = p_target[None] * (log_p_target[None] - log_p)
    terms = torch.where(p_target[None] > 0, terms, torch.zeros_like(terms))
    per_anchor = terms.sum(-1)  # (M, n)
    return per_anchor.mean() if reduction == "mean" else per_anchor.mean(-1)


def ranking_loss(
    queries: torch.Tensor,
    docs: torch.Tensor,
    grades: torch.Tensor,
    dims: Sequence[int],
    *,
    scale: float = 1.0,
    positive_mask: torch.Tensor | None = None,
    dim_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """L_rank: sum_{m,i,j,k} w_m I(y_ij > y_ik)(y_ij - y_ik) log(1 + exp(scale*(s_ik[:m] - s_ij[:m]))).

    queries (B, d) and docs (N, d) adapted; grades (B, N) relevance y_ij (0 = not relevant).
    ``positive_mask`` (B, N) optionally limits the j side to some judged docs (a sample of
    each query's positives) while k still ranges over all N with their true grades; this
    keeps the (M, B, P, N) pair tensor bounded when queries have hundreds of judgements.
    Normalised by the total pair weight times the number of dims, so it is a
    weighted mean. ``scale`` = 1 is the paper's formula on raw cosines. ``dim_weights`` (one per
    dim, mean 1; see :func:`inverse_sqrt_dim_weights`) weights each dim's share; None: all 1.
    """
    j_grades = grades if positive_mask is None else grades * positive_mask.to(grades.dtype)
    # Only the real (query, positive) pairs: padding them to the largest positive count of the
    # batch made most of the (M, B, P, N) tensor zero-weight work (most queries have 1-2 positives).
    q_idx, d_idx = torch.nonzero(j_grades > 0, as_tuple=True)
    if q_idx.numel() == 0:
        return queries.new_zeros(())
    sims = prefix_cosine_matrix(queries, docs, dims)  # (M, B, N)
    pair_sims = sims[:, q_idx, :]  # (M, pairs, N): the scores s_ik of each pair's query
    pos_sims = sims[:, q_idx, d_idx]  # (M, pairs): s_ij
    weight = (j_grades[q_idx, d_idx][:, None] - grades[q_idx]).clamp_min(0)  # (pairs, N), 0 unless y_ij > y_ik
    total = weight.sum()
    if total <= 0:
        return queries.new_zeros(())
    terms = F.softplus(scale * (pair_sims - pos_sims[:, :, None]))  # (M, pairs, N)
    if dim_weights is None:
        return (terms * weight[None]).sum() / (total * sims.shape[0])
    per_dim = (terms * weight[None]).sum((1, 2))  # (M,)
    w = torch.as_tensor(dim_weights, dtype=per_dim.dtype, device=per_dim.device)
    return (w * per_dim).sum() / (total * sims.shape[0])


def inverse_sqrt_dim_weights(dims: Sequence[int]) -> list[float]:
    """Weights proportional to 1/sqrt(m), normalised to mean 1.

    With the default dims (16 … 384): 2.0 at 16, 0.41 at 384.
    """
    raw = [m ** -0.5 for m in dims]
    mean = sum(raw) / len(raw)
    return [r / mean for r in raw]


def relaxed_sign(x: torch.Tensor, tau: float = 0.5, *, straight_through: bool = True) -> torch.Tensor:
    """A differentiable stand-in for ``sign(x)`` (the binary quantiser).

    ``tanh(x * sqrt(d) / tau)``: coordinates of a unit vector are ~1/sqrt(d), so ``tau`` is on the
    scale of a typical coordinate. With ``straight_through`` the forward value is exactly
    ``sign(x)`` (prefix cosines of ±1 vectors are ``1 - 2 * hamming / m``, the binary ranking) and
    the gradient is the tanh's.
    """
    soft = torch.tanh(x * (x.shape[-1] ** 0.5) / tau)
    if not straight_through:
        return soft
    hard = torch.where(x > 0, torch.ones_like(x), -torch.ones_like(x))
    return soft + (hard - soft).detach()


def binary_listwise_distillation_loss(
    anchors: torch.Tensor,
    pool: torch.Tensor,
    target: torch.Tensor,
    dims: Sequence[int],
    *,
    temperature: float = 0.05,
    tau: float = 0.5,
    straight_through: bool = True,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Quantisation-aware listwise term: ``listwise_distillation_loss`` on the *binarised* prefixes.

    Anchors and pool go through :func:`relaxed_sign`, so the m-prefix cosines are (straight-through:
    exactly) the Hamming similarities a binary first stage ranks by; the target is still the
    full-dim float cosines. Trains prefixes whose sign bits keep the full-dim ranking.
    """
    return listwise_distillation_loss(
        relaxed_sign(anchors, tau, straight_through=straight_through),
        relaxed_sign(pool, tau, straight_through=straight_through),
        target, dims, temperature=temperature, mask=mask)
