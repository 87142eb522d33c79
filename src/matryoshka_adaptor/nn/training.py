"""The optimisation loop: unsupervised (stage 1) and supervised (stage 2), with validation,
early stopping and a divergence guard.

The trainer takes the whole :class:`~matryoshka_adaptor.config.AdaptorConfig` and the
:class:`TrainingData` built once by the fit pipeline; all data moves to the device once and a step
gathers its batch by index. The loss is a weighted sum over declared :data:`LOSS_TERMS`: each is a
function of a batch plus the config field holding its weight, so a new term is one function and one
entry (and its weight one config field).

Validation is a retrieval score, not a loss, because the loss can keep falling while the ranking
the user cares about stops improving:

- stage 1: recall@k of each held-out anchor's full-dim top-k among the m-prefix top-k, averaged
  over the dims. It is logged, not used to stop (it did not track query retrieval), except by the
  divergence guard.
- stage 2: nDCG@10 of held-out training queries (graded gains), averaged over the dims; the best
  state seen is restored (early stopping).

Divergence guard: a non-finite loss or weight, or a validation score that falls below
``collapse_fraction`` of its starting value, stops the stage, restores the best weights seen and
emits a :class:`~matryoshka_adaptor.errors.TrainingDivergedWarning`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from statistics import NormalDist

import numpy as np
import torch
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from ..config import GAMMA_CANDIDATES, AdaptorConfig, resolve_queries_as_candidates, resolve_temperature
from ..errors import HeldOutEvidenceWarning, TrainingDivergedWarning
from . import losses
from .module import AdaptorNet


# ------------------------------------------------------------------------------- data


@dataclass
class TrainingData:
    """Everything a fit trains on, assembled once by the fit pipeline and passed to the trainer.

    Attributes
    ----------
    corpus : ndarray of shape (n, d)
        Unit vectors: the training sample of the corpus.
    anchors : ndarray of shape (a, d)
        Unit vectors: corpus rows ``0 .. n_corpus_anchors - 1`` first, then (unlabelled) queries.
    neighbor_idx, neighbor_sims : ndarray of shape (a, k)
        Each anchor's full-dim nearest corpus rows and their cosines.
    n_corpus_anchors : int
        How many leading anchors are corpus rows (the rest are queries).
    queries : ndarray of shape (q, d) or None
        Unit query vectors of a supervised fit.
    positives : list of list of (int, float) or None
        Per query, its (corpus row, grade > 0) judgements.
    hard_negatives : ndarray of shape (q, h) or None
        Per query, its top full-dim corpus rows (unjudged ones act as negatives).
    query_groups : ndarray of shape (q,) or None
        Per query, its group's code (topic, article, source): the labelled holdout takes whole groups.
    """

    corpus: np.ndarray
    anchors: np.ndarray
    neighbor_idx: np.ndarray
    neighbor_sims: np.ndarray
    n_corpus_anchors: int
    queries: np.ndarray | None = None
    positives: list[list[tuple[int, float]]] | None = None
    hard_negatives: np.ndarray | None = None
    query_groups: np.ndarray | None = None

    @property
    def supervised(self) -> bool:
        return self.positives is not None


@dataclass
class TrainState:
    """What one stage did: validation history, best step and score, whether the guard stopped it."""

    history: list[dict] = field(default_factory=list)
    best_step: int = 0
    best_score: float = -math.inf
    initial_score: float | None = None
    steps_run: int = 0
    diverged: str | None = None
    shrink: float = 1.0
    initial_by_dim: dict | None = None  # stage 2: held-out nDCG@10 per dim before its first step
    query_choice: dict | None = None  # use_queries="validated": both stage-1 scores and the one kept
    shrink_evidence: dict | None = None  # supervised_shrink="auto": held-out gain of the full stage 2 over half
    shrink_scores: dict | None = None  # shrink chosen on the grid: each value's held-out score
    gamma_choice: dict | None = None  # gamma="validated": held-out score of each ranking weight and the one kept


# ------------------------------------------------------------------------------ batches


@dataclass
class UnsupervisedBatch:
    """One step's anchors and pool, passed through the network (what unsupervised terms see)."""

    adapted: torch.Tensor  # (B + P, d): adapted anchors, then adapted pool rows
    anchors_adapted: torch.Tensor  # (B, d): adapted[:B]
    rotated: torch.Tensor  # (B + P, d): the rotated inputs z (the reconstruction target)
    anchor_ids: torch.Tensor  # (B,)
    pool_rows: torch.Tensor  # (P,) corpus rows: the anchors' neighbours, then random rows
    neighbor_sims: torch.Tensor  # (B, k) full-dim cosines of each anchor with its neighbours
    n_corpus_anchors: int
    dims: tuple[int, ...]
    config: AdaptorConfig
    temperature: float  # of the listwise terms in this stage (Trainer.stage_temperature)
    adapted_target: bool = False  # stage 2 with supervised_listwise_target="adapted"

    @property
    def n(self) -> int:
        return self.anchor_ids.shape[0]

    @cached_property
    def target(self) -> torch.Tensor:
        """Full-dim cosines of the anchors with every batch row, constants: of the original vectors (a
        learned rotation leaves them unchanged), or with ``adapted_target`` of the adapted ones, detached,
        so that the prefixes follow the ranking the supervised stage is teaching the full vector."""
        if self.adapted_target:
            a = self.adapted.detach()
            return losses.prefix_cosine_matrix(a[: self.n], a, (a.shape[1],))[0]
        z = self.rotated.detach()
        return z[: self.n] @ z.T


@dataclass
class SupervisedBatch:
    """Adapted labelled queries and their pool of documents with true grades."""

    queries: torch.Tensor  # (B, d) adapted
    docs: torch.Tensor  # (N, d) adapted
    grades: torch.Tensor  # (B, N)
    as_positive: torch.Tensor  # (B, N) which docs act as each query's positive j
    dims: tuple[int, ...]
    config: AdaptorConfig


def _topk_term(b: UnsupervisedBatch) -> torch.Tensor:
    k = b.neighbor_sims.shape[1]
    neighbours = b.adapted[b.n : b.n + b.n * k].view(b.n, k, -1)
    return losses.topk_similarity_loss(b.anchors_adapted, neighbours, b.neighbor_sims, b.dims)


def _pair_term(b: UnsupervisedBatch) -> torch.Tensor:
    z = b.rotated[: b.n].detach()
    return losses.pairwise_similarity_loss(b.anchors_adapted, z @ z.T, b.dims)


def _reconstruction_term(b: UnsupervisedBatch) -> torch.Tensor:
    return losses.reconstruction_loss(b.adapted, b.rotated)


def _listwise_term(b: UnsupervisedBatch) -> torch.Tensor:
    # Pool = the batch's anchors, all their neighbours and `listwise_negatives` random corpus rows:
    # each anchor's own top-k are the positives, the others' neighbours are hard negatives, the
    # random rows stand for the rest of the corpus.
    mask = listwise_pool_mask(b.anchor_ids, b.pool_rows, b.n_corpus_anchors,
                              queries_as_candidates=b.config.queries_as_candidates)
    return losses.listwise_distillation_loss(b.anchors_adapted, b.adapted, b.target, b.dims,
                                             temperature=b.temperature, mask=mask)


def _binary_term(b: UnsupervisedBatch) -> torch.Tensor:
    mask = listwise_pool_mask(b.anchor_ids, b.pool_rows, b.n_corpus_anchors,
                              queries_as_candidates=b.config.queries_as_candidates)
    return losses.binary_listwise_distillation_loss(b.anchors_adapted, b.adapted, b.target, b.dims,
                                                    temperature=b.temperature, mask=mask)


def _ranking_term(b: SupervisedBatch) -> torch.Tensor:
    weights = losses.inverse_sqrt_dim_weights(b.dims) if b.config.rank_dim_weights == "inv_sqrt" else None
    return losses.ranking_loss(b.queries, b.docs, b.grades, b.dims, scale=b.config.rank_scale,
                               positive_mask=b.as_positive, dim_weights=weights)


@dataclass(frozen=True)
class LossTerm:
    """One term of the objective.

    Attributes
    ----------
    name : str
        Its key in the history and in :func:`stage_weights`.
    fn : callable
        ``fn(batch) -> scalar Tensor``; a :class:`SupervisedBatch` when ``supervised``, else an
        :class:`UnsupervisedBatch`.
    weight : str
        The ``AdaptorConfig`` field holding its weight.
    stage2_weight : str or None
        The field holding its weight in the supervised stage, when that differs.
    supervised : bool
        Computed on labelled queries (stage 2 only).
    """

    name: str
    fn: Callable
    weight: str
    stage2_weight: str | None = None
    supervised: bool = False

    def weight_in(self, config: AdaptorConfig, stage: int) -> float:
        return getattr(config, self.stage2_weight if stage == 2 and self.stage2_weight else self.weight)


# The objective. Terms with weight 0 are not computed. Stage 2 adds the supervised terms to these.
LOSS_TERMS: tuple[LossTerm, ...] = (
    LossTerm("topk", _topk_term, "topk_weight"),
    LossTerm("pair", _pair_term, "alpha"),
    LossTerm("rec", _reconstruction_term, "beta", stage2_weight="supervised_beta"),
    LossTerm("listwise", _listwise_term, "listwise_weight"),
    LossTerm("binary", _binary_term, "binary_weight"),
    LossTerm("rank", _ranking_term, "gamma", supervised=True),
)


def stage_weights(config: AdaptorConfig, stage: int) -> dict[str, float]:
    """The weight of every loss term in ``stage`` (1: unsupervised, 2: supervised), from the config."""
    return {t.name: float(t.weight_in(config, stage)) for t in LOSS_TERMS if stage == 2 or not t.supervised}


def weighted_sum(terms, weights: dict[str, float], batch) -> tuple[torch.Tensor | None, dict]:
    """Sum of weight * term over the terms with a non-zero weight (None when there is none)."""
    total, parts = None, {}
    for term in terms:
        w = weights[term.name]
        if w:
            parts[term.name] = term.fn(batch)
            total = w * parts[term.name] if total is None else total + w * parts[term.name]
    return total, parts


def listwise_pool_mask(anchor_ids: torch.Tensor, pool_rows: torch.Tensor, n_corpus_anchors: int, *,
                       queries_as_candidates: bool = True) -> torch.Tensor:
    """(B, B + P) candidates valid for each anchor in the pool [anchors, corpus rows ``pool_rows``].

    Anchor ids below ``n_corpus_anchors`` are corpus rows; the rest are queries. An anchor's own
    vector, met as itself or as its corpus row in another anchor's neighbour list, is masked out:
    it would take most of the target mass and teach nothing. Without ``queries_as_candidates`` the
    query anchors are masked out of every list too, so each anchor ranks documents only.
    """
    anchor_key = torch.where(anchor_ids < n_corpus_anchors, anchor_ids, -1 - anchor_ids)
    pool_key = torch.cat([anchor_key, pool_rows])
    mask = pool_key[None, :] != anchor_key[:, None]
    return mask if queries_as_candidates else mask & (pool_key >= 0)[None, :]


class EMAWeights:
    """Exponential moving average of a module's parameters, swapped in for evaluation."""

    def __init__(self, net: torch.nn.Module, decay: float):
        self.net = net
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in net.named_parameters()}

    @torch.no_grad()
    def update(self) -> None:
        for n, p in self.net.named_parameters():
            self.shadow[n].lerp_(p.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for n, p in self.net.named_parameters():
            p.copy_(self.shadow[n])

    @contextlib.contextmanager
    def swapped_in(self):
        raw = {n: p.detach().clone() for n, p in self.net.named_parameters()}
        self.copy_to_model()
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.net.named_parameters():
                    p.copy_(raw[n])


def interpolate_weights(start: dict, end: dict, lam: float) -> dict:
    """The state dict start + lam * (end - start) (non-float entries from ``end``): the supervised shrink.

    The ends are returned exactly (copies), not by the formula, whose float rounding at lam = 1 would
    give weights a hair away from the trained ones that a shrink of 1 promises.
    """
    if lam in (0.0, 1.0):
        return {k: (start if lam == 0.0 and end[k].is_floating_point() else end)[k].clone() for k in end}
    return {k: start[k] + lam * (end[k] - start[k]) if end[k].is_floating_point() else end[k] for k in end}


def paired_evidence(gain: np.ndarray, z: float, groups: np.ndarray | None = None) -> dict:
    """Mean per-query gain, its standard error, and whether the mean exceeds ``z`` standard errors
    (with ``groups``: whether a sign-flip test over the groups finds it at the same level).

    With ``groups`` (one label per query; held-out queries come as whole groups) the queries of a
    group are not independent evidence, and with a handful of groups a standard error is itself too
    noisy to test by. The test is then Fisher's sign-flip randomisation test over the groups' summed
    gains (``scipy.stats.permutation_test``; exact up to 16 groups): beyond noise when its one-sided
    p-value is at most the normal tail beyond ``z`` (0.05 for 1.645), so fewer than five held-out
    groups are never evidence enough. The record adds the number of groups, both one-sided p-values
    and ``loss_beyond_noise`` (the same test for a loss); its ``standard_error`` is the cluster-robust
    one, for information. With one query per group: the plain rule, bit for bit.
    """
    n = len(gain)
    codes, group_of = (None, None) if groups is None else np.unique(groups, return_inverse=True)
    if groups is None or len(codes) == n:
        se = float(gain.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
        return {"gain": float(gain.mean()), "standard_error": se, "held_out_queries": int(n),
                "beyond_noise": bool(gain.mean() > z * se)}
    from scipy.stats import permutation_test

    gain = np.asarray(gain, dtype=np.float64)
    sums = np.bincount(group_of, weights=gain)
    p = {"greater": 1.0, "less": 1.0}  # one group: nothing to test by
    for side in p if len(sums) > 1 else ():
        p[side] = float(permutation_test((sums,), _summed, permutation_type="samples", vectorized=True, batch=4096,
                                         alternative=side, n_resamples=SIGN_FLIPS, rng=np.random.default_rng(0)).pvalue)
    level = NormalDist().cdf(-z)
    # CR1, reported only: with two or three groups it can come out near zero, which is why it is not the test
    centred = np.bincount(group_of, weights=gain - gain.mean())
    se = float(math.sqrt(len(sums) / (len(sums) - 1) * float(np.sum(centred ** 2))) / n) if len(sums) > 1 else math.inf
    return {"gain": float(gain.mean()), "standard_error": se, "held_out_queries": int(n),
            "held_out_groups": int(len(sums)), "p_value_gain": p["greater"], "p_value_loss": p["less"], "level": level,
            "loss_beyond_noise": bool(p["less"] <= level), "beyond_noise": bool(p["greater"] <= level)}


SIGN_FLIPS = 2 ** 16  # every sign pattern up to 16 groups; above, this many random ones (seeded)


def min_groups_for_evidence(z: float) -> int:
    """The fewest groups whose sign-flip test can reach the level of ``z``: its smallest p-value is 2^-groups."""
    return math.ceil(-math.log2(NormalDist().cdf(-z)))


def _summed(x: np.ndarray, axis: int) -> np.ndarray:
    return x.sum(axis=axis)


def _split(n: int, fraction: float, rng: np.random.Generator, cap: int,
           min_val: int = 1) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    n_val = min(cap, int(round(n * fraction))) if n >= 20 else 0
    if n_val < min_val:  # too few to choose anything by: train on all of them instead
        n_val = 0
    return perm[n_val:], perm[:n_val]


def _group_split(groups: np.ndarray, fraction: float, rng: np.random.Generator, cap: int,
                 min_val: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``_split`` by whole groups: groups in a random order are held out until they hold the share
    ``_split`` would hold out (the last one may overshoot it); at least one group always trains.
    Rows come in the random order of their groups, so one group per row is ``_split`` exactly."""
    n = len(groups)
    target = min(cap, int(round(n * fraction))) if n >= 20 else 0
    codes, sizes = np.unique(groups, return_counts=True)
    order = rng.permutation(len(codes))
    count = 0
    for i in order[:-1]:
        if count >= target or count + sizes[i] > cap:
            break
        count += sizes[i]
    if count < max(min_val, 1):  # too few to choose anything by: train on all of them instead
        count = 0
    position = np.empty(len(codes), dtype=np.int64)
    position[order] = np.arange(len(codes))
    rows = np.argsort(position[np.searchsorted(codes, groups)], kind="stable")
    return rows[count:], rows[:count]


class Trainer:
    """Runs the optimisation of an ``AdaptorNet``; one instance per fit.

    Parameters
    ----------
    net : AdaptorNet
        The network to train (moved to ``device``).
    dims : tuple of int
        The Matryoshka dims every loss and validation averages over.
    config : AdaptorConfig
        Every setting: loss weights per stage, steps, batch size, optimiser, validation.
    data : TrainingData
        The training data, moved to ``device`` once.
    device : str, default "cpu"

    Attributes
    ----------
    net, dims, config, data, device
        As given.
    rng : numpy Generator, gen : torch Generator
        The fit's random streams (both seeded with ``config.seed``).
    corpus, anchors, neighbor_idx, neighbor_sims, queries : Tensor
        ``data`` on the device.
    """

    def __init__(self, net: AdaptorNet, dims: tuple[int, ...], config: AdaptorConfig, data: TrainingData,
                 *, device: str = "cpu", corpus_only_temperature: float | None = None):
        self.net = net.to(device)
        # use_queries="validated": the corpus-only stage-1 run's temperature, that of a fit without labels
        self.corpus_only_temperature = corpus_only_temperature
        self.dims = tuple(dims)
        # "auto" settings resolved for this fit, so the config says what runs
        self.config = config.replace(queries_as_candidates=resolve_queries_as_candidates(
            config.queries_as_candidates, data.supervised),
            temperature=resolve_temperature(config.temperature, data.corpus, config.seed, data.supervised))
        self.device = device
        self.rng = np.random.default_rng(config.seed)
        self.gen = torch.Generator(device="cpu").manual_seed(config.seed)
        self.data = data
        self.corpus = self._t(data.corpus)
        self.anchors = self._t(data.anchors)
        self.neighbor_idx = self._t(data.neighbor_idx, torch.long)
        self.neighbor_sims = self._t(data.neighbor_sims)
        self.queries = self._t(data.queries) if data.queries is not None else None
        self._dynamic_hard: np.ndarray | None = None
        self._labelled_split: tuple[np.ndarray, np.ndarray] | None = None
        self._corpus_anchors_only = False
        self.last_val_by_dim: dict | None = None
        self.last_val_by_query: np.ndarray | None = None  # set by query_ndcg; the "auto" shrink's paired test reads it

    # ----------------------------------------------------------------- helpers
    def _t(self, x: np.ndarray, dtype=torch.float32) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype, device=self.device)

    def _randint(self, high: int, size: int) -> torch.Tensor:
        return torch.randint(high, (size,), generator=self.gen).to(self.device)

    def _anchor_sampler(self, ids: np.ndarray, size: int, query_fraction: float):
        """Draws a batch of anchor ids, at least a ``query_fraction`` share of them query anchors.

        Queries are often far fewer than documents, yet query -> document order is what retrieval
        needs; a minimum share keeps them from being drowned out. Where queries already make up
        that share, anchors are drawn uniformly.
        """
        is_query = ids >= self.data.n_corpus_anchors
        groups = [self._t(ids, torch.long)]
        n_query = 0
        if 0 < is_query.mean() < query_fraction:
            n_query = max(1, int(round(query_fraction * size)))
            groups = [self._t(ids[~is_query], torch.long), self._t(ids[is_query], torch.long)]

        def draw() -> torch.Tensor:
            if n_query == 0:
                return groups[0][self._randint(len(groups[0]), size)]
            docs, queries = groups
            return torch.cat([docs[self._randint(len(docs), size - n_query)],
                              queries[self._randint(len(queries), n_query)]])

        return draw

    def unsupervised_batch(self, anchor_ids: torch.Tensor, weights: dict[str, float], *,
                           stage: int = 1) -> UnsupervisedBatch:
        """The anchors, their neighbours (and random rows for the listwise pool), adapted."""
        nb_idx = self.neighbor_idx[anchor_ids]  # (B, k)
        rows = [nb_idx.reshape(-1)]
        if weights.get("listwise") and self.config.listwise_negatives:
            rows.append(self._randint(self.corpus.shape[0], self.config.listwise_negatives))
        pool_rows = torch.cat(rows)
        adapted, z = self.net(torch.cat([self.anchors[anchor_ids], self.corpus[pool_rows]]))
        # The anchors' slice is taken once, here, before any term: every term shares the same
        # graph node (and autograd accumulates their gradients in a fixed order).
        return UnsupervisedBatch(adapted, adapted[: len(anchor_ids)], z, anchor_ids, pool_rows, self.neighbor_sims[anchor_ids],
                                 self.data.n_corpus_anchors, self.dims, self.config, self.stage_temperature(stage),
                                 adapted_target=stage == 2 and self.stage_two_listwise_target() == "adapted")

    def supervised_pool(self, query_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pool corpus rows, grades (B, pool), which pool docs act as each query's positive j).

        Pool: up to ``max_positives`` sampled positives of each batch query, ``random_negatives``
        random corpus rows, and each query's hard negatives (full-dim and, when on, adapted-space).
        Every pool doc keeps its true grade for every query, so a sampled positive of one query is
        never counted as a negative of another that also judged it relevant. Only a query's own
        sampled positives act as j in the ranking pairs, which bounds the (dims x B x P x pool)
        tensor when queries have hundreds of judgements.
        """
        positives, cap = self.data.positives, self.config.max_positives
        sampled: list[list[int]] = []
        for q in query_ids:
            plist = positives[q]
            if len(plist) > cap:
                pick = self.rng.choice(len(plist), size=cap, replace=False)
                plist = [plist[i] for i in pick]
            sampled.append([r for r, _ in plist])
        other_rows = self.rng.integers(0, self.corpus.shape[0], size=self.config.random_negatives).tolist()
        if self.data.hard_negatives is not None:
            other_rows += self.data.hard_negatives[query_ids].reshape(-1).tolist()
        if self._dynamic_hard is not None:
            other_rows += self._dynamic_hard[query_ids].reshape(-1).tolist()
        pool_rows = np.unique(np.asarray([r for rows in sampled for r in rows] + other_rows, dtype=np.int64))
        col = {int(r): j for j, r in enumerate(pool_rows)}
        grades = np.zeros((len(query_ids), len(pool_rows)), dtype=np.float32)
        as_j = np.zeros_like(grades, dtype=bool)
        for i, q in enumerate(query_ids):
            for r, g in positives[q]:
                j = col.get(r)
                if j is not None:
                    grades[i, j] = g
            as_j[i, [col[r] for r in sampled[i]]] = True
        return pool_rows, grades, as_j

    def supervised_batch(self, query_ids: np.ndarray) -> SupervisedBatch:
        pool_rows, grades, as_j = self.supervised_pool(query_ids)
        docs = self.corpus[self._t(pool_rows, torch.long)]
        q_adapted, _ = self.net(self.queries[self._t(query_ids, torch.long)])
        d_adapted, _ = self.net(docs)
        return SupervisedBatch(q_adapted, d_adapted, self._t(grades), self._t(as_j, torch.bool), self.dims,
                               self.config)

    # -------------------------------------------------------------- validation
    @torch.no_grad()
    def _adapt_all(self, x: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
        with parametrize.cached():
            return torch.cat([self.net(x[s : s + chunk])[0] for s in range(0, x.shape[0], chunk)])

    @torch.no_grad()
    def _prefix_topk(self, queries: torch.Tensor, corpus: torch.Tensor, m: int, k: int) -> torch.Tensor:
        qn = torch.nn.functional.normalize(queries[:, :m], dim=-1)
        cn = torch.nn.functional.normalize(corpus[:, :m], dim=-1)
        return (qn @ cn.T).topk(k, dim=1).indices

    @torch.no_grad()
    def neighbor_recall(self, val_ids: torch.Tensor) -> float:
        """Mean over dims of recall of full-dim top-k among m-prefix top-k (held-out anchors)."""
        self.net.eval()
        corpus = self._adapt_all(self.corpus)
        anchors = self._adapt_all(self.anchors[val_ids])
        true = self.neighbor_idx[val_ids]
        k = true.shape[1]
        scores = []
        for m in self.dims:
            found = self._prefix_topk(anchors, corpus, m, k + 1)  # +1: an anchor may find itself
            hit = (found[:, :, None] == true[:, None, :]).any(1).float().mean()
            scores.append(hit.item())
        self.net.train()
        return float(np.mean(scores))

    @torch.no_grad()
    def query_ndcg(self, val_queries: np.ndarray, k: int = 10) -> float:
        """Mean over dims of nDCG@k (linear gain) of held-out training queries (early stopping, the shrink)."""
        self.net.eval()
        corpus = self._adapt_all(self.corpus)
        queries = self._adapt_all(self.queries[self._t(val_queries, torch.long)])
        n = corpus.shape[0]
        gains = torch.zeros(len(val_queries), n, device=self.device)
        for i, q in enumerate(val_queries):
            for r, g in self.data.positives[q]:
                gains[i, r] = g
        discount = 1.0 / torch.log2(torch.arange(2, k + 2, device=self.device, dtype=torch.float32))
        ideal = (gains.topk(min(k, n), dim=1).values * discount[: min(k, n)]).sum(1)
        scores, per_query = [], []
        for m in self.dims:
            top = self._prefix_topk(queries, corpus, m, min(k, n))
            dcg = (gains.gather(1, top) * discount[: top.shape[1]]).sum(1)
            ndcg = dcg / ideal.clamp_min(1e-12)
            scores.append(ndcg.mean().item())
            per_query.append(ndcg.cpu().numpy())
        self.net.train()
        self.last_val_by_dim = dict(zip(self.dims, scores))
        self.last_val_by_dim_and_query = np.stack(per_query)  # (dims, held-out queries)
        self.last_val_by_query = self.last_val_by_dim_and_query.mean(axis=0)  # each query's mean over dims
        return float(np.mean(scores))

    def query_ndcg_of_weights(self, weights: dict, val_queries: np.ndarray, k: int = 10) -> float:
        """``query_ndcg`` of another fit's exported weights on this fit's held-out queries and rows."""
        prerotated = self.net.prerotated and self.net.rotation is not None
        other = AdaptorNet.from_weights(weights, undo_rotation=self.net.rotation.cpu() if prerotated else None)
        own, self.net = self.net, other.to(self.device)
        try:
            return self.query_ndcg(val_queries, k)
        finally:
            self.net = own

    @torch.no_grad()
    def mine_adapted_negatives(self, h: int, chunk: int = 128) -> np.ndarray:
        """Each query's top-h corpus rows by its mean m-prefix cosine in the *current* adapted space.

        Full-dim hard negatives are the documents the original model confuses; the ones that
        confuse short prefixes are different, and move as training goes, so they are re-mined
        every ``eval_every`` steps (as ANCE does for dense retrievers).
        """
        self.net.eval()
        corpus = self._adapt_all(self.corpus)
        queries = self._adapt_all(self.queries)
        out = []
        for s in range(0, queries.shape[0], chunk):
            scores = losses.prefix_cosine_matrix(queries[s : s + chunk], corpus, self.dims).mean(0)
            out.append(scores.topk(min(h, corpus.shape[0]), dim=1).indices.cpu().numpy())
        self.net.train()
        return np.concatenate(out)

    def _weights_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.net.parameters())

    # ------------------------------------------------------------------- loop
    def _loop(self, steps: int, step_fn, val_fn, desc: str, *, early_stopping: bool = True,
              before_step=None) -> TrainState:
        cfg = self.config
        state = TrainState()
        opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        best = copy.deepcopy(self.net.state_dict())
        self.last_val_by_dim = None
        state.best_score = val_fn() if val_fn else -math.inf
        state.initial_score = state.best_score if val_fn else None
        state.initial_by_dim = self.last_val_by_dim
        collapse_below = (cfg.collapse_fraction * state.initial_score
                          if val_fn and cfg.collapse_fraction and state.initial_score > 0 else None)
        bad_evals = 0
        # Exponential moving average of the weights (Polyak averaging): the averaged weights are
        # the ones validated, kept and returned; the raw ones only take the optimiser's steps.
        ema = EMAWeights(self.net, cfg.ema_decay) if cfg.ema_decay else None
        bar = tqdm(range(1, steps + 1), desc=desc, disable=not cfg.progress, unit="step")
        for step in bar:
            if before_step is not None:
                # Outside the cache below: a no-grad pass inside it would leave the rotation
                # cached without its graph, and that step's loss would not train it.
                before_step(step)
            # One rotation per step: a parametrised (orthogonal) weight is computed once and
            # reused by every forward pass of the step instead of once per pass.
            with parametrize.cached():
                loss, parts = step_fn()
            if not torch.isfinite(loss):
                state.diverged = f"the loss became {loss.item()} at step {step}"
                break
            opt.zero_grad(set_to_none=True)
            if loss.requires_grad:
                loss.backward()
                opt.step()
            if ema is not None:
                ema.update()
            state.steps_run = step
            if step % 20 == 0 or step == 1:
                bar.set_postfix(loss=f"{loss.item():.4f}", best=f"{state.best_score:.4f}")
            if val_fn and (step % cfg.eval_every == 0 or step == steps):
                with ema.swapped_in() if ema is not None else contextlib.nullcontext():
                    score = val_fn()
                    improved = score > state.best_score + cfg.min_improvement
                    if improved:  # inside: with EMA on, the averaged weights are the ones kept
                        best = copy.deepcopy(self.net.state_dict())
                state.history.append({"step": step, "loss": float(loss.item()), "val": score,
                                      **{k: float(v.item()) for k, v in parts.items()}})
                if self.last_val_by_dim is not None:  # query nDCG: per dim too, to see where a fit wins
                    state.history[-1]["val_by_dim"] = self.last_val_by_dim
                if not math.isfinite(score) or not self._weights_finite():
                    state.diverged = f"the weights became non-finite by step {step}"
                    break
                if collapse_below is not None and score < collapse_below:
                    state.diverged = (f"the validation score fell from {state.initial_score:.3f} to {score:.3f} "
                                      f"at step {step} (below collapse_fraction={cfg.collapse_fraction})")
                    break
                if improved:
                    state.best_score, state.best_step, bad_evals = score, step, 0
                else:
                    bad_evals += 1
                    if early_stopping and bad_evals >= cfg.patience:
                        break
        bar.close()
        if state.diverged is None and val_fn is None and not self._weights_finite():
            state.diverged = "the weights became non-finite"
        if state.diverged is not None:
            self.net.load_state_dict(best)
            warnings.warn(f"{desc}: training diverged ({state.diverged}); stopped and restored the best weights "
                          f"seen (step {state.best_step}). Lower lr (now {cfg.lr}) or check the input vectors.",
                          TrainingDivergedWarning, stacklevel=2)
        elif val_fn and early_stopping:
            self.net.load_state_dict(best)
        else:
            if ema is not None:
                ema.copy_to_model()
            state.best_step = state.steps_run
        return state

    def labelled_split(self, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(training, held-out) labelled query indices, drawn once per fit (from ``rng``, else the fit's stream)."""
        if self._labelled_split is None:
            cfg, data = self.config, self.data
            labeled = np.flatnonzero([len(p) > 0 for p in data.positives])
            # With query groups the held-out queries are whole groups, so that the checks made on them
            # (early stopping, the shrink, the validated choices) see topics stage 2 never trained on.
            args = (cfg.validation_fraction, self.rng if rng is None else rng)
            limits = dict(cap=cfg.max_validation_queries, min_val=cfg.min_validation_queries)
            if data.query_groups is None:
                train_q, val_q = _split(len(labeled), *args, **limits)
            else:
                train_q, val_q = _group_split(data.query_groups[labeled], *args, **limits)
            self._labelled_split = labeled[train_q], labeled[val_q]
            if data.query_groups is not None and len(val_q):
                self._warn_if_too_few_groups(len(np.unique(self.groups_of(labeled[val_q]))), len(val_q))
        return self._labelled_split

    def _warn_if_too_few_groups(self, n_groups: int, n_queries: int) -> None:
        """Say before training when the held-out groups are too few for any gain to pass ``paired_evidence``."""
        cfg, needed = self.config, min_groups_for_evidence(self.EVIDENCE_Z)
        consequences = [what for applies, what in (
            (cfg.supervised_fallback == "corpus-only",
             "supervised_fallback='corpus-only' will keep the corpus-only adaptor"),
            (cfg.use_queries == "validated", "use_queries='validated' will drop the query anchors"),
            (cfg.supervised_shrink == "auto" and cfg.supervised_fallback != "corpus-only",
             "supervised_shrink='auto' will keep stage 2 half way")) if applies]
        if n_groups >= needed or not consequences:
            return
        warnings.warn(f"only {n_groups} query group{'' if n_groups == 1 else 's'} held out ({n_queries} labelled "
                      f"queries); a test over fewer than {needed} groups cannot show a gain beyond noise, so "
                      f"{', and '.join(consequences)}. Raise validation_fraction (now {cfg.validation_fraction:g}) "
                      f"so that {needed} or more groups are held out (max_validation_queries, now "
                      f"{cfg.max_validation_queries}, caps the held-out queries), or fit without query_groups.",
                      HeldOutEvidenceWarning, stacklevel=2)

    def groups_of(self, queries: np.ndarray) -> np.ndarray | None:
        """The ``query_groups`` labels of these queries (None without groups): the units of held-out evidence."""
        return None if self.data.query_groups is None else self.data.query_groups[queries]

    def stage_temperature(self, stage: int) -> float:
        """The listwise temperature of ``stage`` (a number: "auto" is resolved in ``__init__``)."""
        if stage == 2 and self.config.supervised_temperature is not None:
            return self.config.supervised_temperature
        return self.config.temperature

    def stage_two_listwise_target(self) -> str:
        """``supervised_listwise_target`` resolved: "auto" is "adapted" when stage 2 holds labelled queries out.

        The adapted target spreads what the labels teach the full vector to every prefix; with enough
        labels to hold some out it was ahead on the SciFact and NFCorpus dev splits at 200 and all
        labels (docs/ablations.md, session 12), and the held-out queries still decide how much of the
        stage is kept. With fewer, nothing checks it, so the original vectors' ranking stays the target.
        """
        setting = self.config.supervised_listwise_target
        if setting != "auto":
            return setting
        return "adapted" if len(self.labelled_split()[1]) else "original"

    def holds_out_query_anchors(self) -> bool:
        """Whether the held-out labelled queries are kept out of the query anchors: with
        ``use_queries="validated"`` or ``supervised_fallback="corpus-only"``, whose choices are made
        on those queries: as anchors the fit would learn to place those very vectors, and the choice
        would favour it on queries it has in effect seen (docs/ablations.md, session 19)."""
        cfg, data = self.config, self.data
        return (data.supervised and len(data.anchors) > data.n_corpus_anchors
                and (cfg.use_queries == "validated" or cfg.supervised_fallback == "corpus-only"))

    def _anchor_ids(self, corpus_only: bool) -> np.ndarray:
        """Anchor ids training may draw: the corpus rows and, unless ``corpus_only``, the query anchors
        (not those of held-out queries when ``holds_out_query_anchors``, so that the choices are made
        on queries neither stage has seen)."""
        data = self.data
        ids = np.arange(len(data.anchors))
        if corpus_only:
            return ids[: data.n_corpus_anchors]
        if self.holds_out_query_anchors():
            ids = np.setdiff1d(ids, data.n_corpus_anchors + self.labelled_split()[1])
        return ids

    def fit_stage_one(self) -> TrainState:
        """Stage 1, with ``use_queries="validated"`` run with and without the query anchors.

        The two starts are scored on the held-out labelled queries (nDCG@10, mean over the dims, per
        query) and the query anchors are kept only when their paired gain over the corpus-only start
        exceeds ``EVIDENCE_Z`` standard errors, the rule of the shrink: the corpus-only start is the
        one that assumes nothing about the queries to come, and it runs at the temperature of a fit
        without labels (``corpus_only_temperature``), as the corpus-only adaptor does. Query anchors
        lift MiniLM on SciFact by ~0.09 at 16 dims and cost multilingual-e5 on unseen XQuAD-R
        articles as much (docs/ablations.md); held-out queries (whole groups, with ``query_groups``)
        are the only evidence a fit has of which case it is in.
        """
        if not self.holds_out_query_anchors():
            return self.fit_unsupervised()
        # Stage 1's anchors leave the held-out queries out, so the split is drawn now, on its own stream
        # (the fit's stream stays as in a plain fit).
        val_q = self.labelled_split(np.random.default_rng([self.config.seed, 2]))[1]
        if self.config.use_queries != "validated" or not len(val_q):
            return self.fit_unsupervised()
        start = copy.deepcopy(self.net.state_dict())
        with_queries = self.fit_unsupervised()
        score_with, weights_with = self.query_ndcg(val_q), copy.deepcopy(self.net.state_dict())
        per_query_with = self.last_val_by_query
        self.net.load_state_dict(start)
        base = self.config  # the start a fit without labels would make, at its temperature
        if self.corpus_only_temperature is not None:
            self.config = base.replace(temperature=self.corpus_only_temperature)
        try:
            corpus_only = self.fit_unsupervised(corpus_only=True)
            corpus_only_temperature = self.config.temperature
        finally:
            self.config = base
        score_without = self.query_ndcg(val_q)
        evidence = paired_evidence(per_query_with - self.last_val_by_query, self.EVIDENCE_Z, self.groups_of(val_q))
        keep_queries = evidence.pop("beyond_noise")
        state = with_queries if keep_queries else corpus_only
        if keep_queries:
            self.net.load_state_dict(weights_with)
        self._corpus_anchors_only = not keep_queries
        state.query_choice = {"val_ndcg@10_with_queries": score_with, "val_ndcg@10_corpus_only": score_without,
                              **evidence, "kept": "with queries" if keep_queries else "corpus only",
                              "corpus_only_temperature": corpus_only_temperature}
        return state

    def fit_unsupervised(self, *, corpus_only: bool = False) -> TrainState:
        """Stage 1: the unsupervised terms for ``config.steps`` steps (``corpus_only``: no query anchors)."""
        cfg = self.config
        weights = stage_weights(cfg, 1)
        anchor_ids = self._anchor_ids(corpus_only)
        train_ids, val_ids = _split(len(anchor_ids), cfg.validation_fraction, self.rng,
                                    cap=cfg.max_validation_anchors)
        train_ids, val_ids = anchor_ids[train_ids], anchor_ids[val_ids]
        val_t = self._t(val_ids, torch.long)
        draw = self._anchor_sampler(train_ids, min(cfg.batch_size, len(train_ids)), cfg.query_fraction)
        unsupervised = [t for t in LOSS_TERMS if not t.supervised]

        def step():
            total, parts = weighted_sum(unsupervised, weights, self.unsupervised_batch(draw(), weights))
            return (self.anchors.new_zeros(()) if total is None else total), parts

        val = (lambda: self.neighbor_recall(val_t)) if len(val_ids) else None
        # Held-out neighbour recall is logged, not used to stop: it did not track query retrieval
        # quality (docs/ablations.md), so stage 1 runs all its steps unless the guard stops it.
        return self._loop(cfg.steps, step, val, "fit (unsupervised)", early_stopping=False)

    def fit_supervised(self) -> TrainState:
        """Stage 2: the supervised terms on labelled queries plus the unsupervised terms (stage-2 weights).

        With ``gamma="validated"`` stage 2 runs once per weight in ``GAMMA_CANDIDATES``, each from the
        same start and the same random streams (so each run is the plain fit with that weight), and the
        weights scoring best on the held-out labelled queries (nDCG@10, mean over the dims) are kept;
        ties keep the first. Without held-out queries the first weight runs alone. ``self.config``
        then holds the weight kept, and the returned state's ``gamma_choice`` every score.
        """
        if not self.data.supervised:
            raise ValueError("fit_supervised needs TrainingData with queries and positives")
        if self.config.gamma != "validated":
            return self._fit_supervised_once()
        base, val_q = self.config, self.labelled_split()[1]
        if not len(val_q):
            self.config = base.replace(gamma=GAMMA_CANDIDATES[0])
            return self._fit_supervised_once()
        # the fit's two streams are all stage 2 draws from, so restoring them replays the plain fit
        start = copy.deepcopy(self.net.state_dict())
        rng_state, gen_state = self.rng.bit_generator.state, self.gen.get_state()
        runs = []
        for gamma in GAMMA_CANDIDATES:
            self.net.load_state_dict(start)
            self.rng.bit_generator.state = rng_state
            self.gen.set_state(gen_state)
            self.config = base.replace(gamma=gamma)
            state = self._fit_supervised_once()
            runs.append((self.query_ndcg(val_q), gamma, state, copy.deepcopy(self.net.state_dict())))
        _, gamma, state, weights = max(runs, key=lambda r: r[0])  # the first of equal scores
        self.net.load_state_dict(weights)
        self.config = base.replace(gamma=gamma)
        state.gamma_choice = {"val_ndcg@10_by_gamma": {str(g): s for s, g, *_ in runs}, "kept": gamma,
                              "held_out_queries": int(len(val_q))}
        return state

    def _fit_supervised_once(self) -> TrainState:
        """One run of stage 2 with ``self.config`` (its ``gamma`` a number)."""
        cfg = self.config
        weights = stage_weights(cfg, 2)
        self._dynamic_hard = None
        train_q, val_q = self.labelled_split()
        bs = min(cfg.batch_size, len(train_q))
        anchor_ids = self._anchor_ids(self._corpus_anchors_only)
        # Uniform anchors here: a raised query share lowered dev nDCG in this stage (docs/ablations.md).
        draw_anchors = self._anchor_sampler(anchor_ids, min(cfg.batch_size, len(anchor_ids)), 0.0)
        supervised = [t for t in LOSS_TERMS if t.supervised]
        unsupervised = [t for t in LOSS_TERMS if not t.supervised]

        def remine(step: int) -> None:
            if (step - 1) % cfg.eval_every == 0:
                self._dynamic_hard = self.mine_adapted_negatives(cfg.dynamic_negatives)

        def step():
            q = train_q[self.rng.choice(len(train_q), size=bs, replace=False)]
            loss, parts = weighted_sum(supervised, weights, self.supervised_batch(q))
            if any(weights[t.name] for t in unsupervised):
                u_batch = self.unsupervised_batch(draw_anchors(), weights, stage=2)
                u_loss, u_parts = weighted_sum(unsupervised, weights, u_batch)
                loss = u_loss if loss is None else loss + u_loss
                parts.update(u_parts)
            return (self.anchors.new_zeros(()) if loss is None else loss), parts

        val = (lambda: self.query_ndcg(val_q)) if len(val_q) else None
        steps = cfg.supervised_steps
        if cfg.supervised_steps_per_query is not None:
            steps = min(steps, max(1, math.ceil(cfg.supervised_steps_per_query * len(train_q))))
        start = copy.deepcopy(self.net.state_dict())
        state = self._loop(steps, step, val, "fit (supervised)", before_step=remine if cfg.dynamic_negatives else None)
        shrink = cfg.supervised_shrink
        if shrink == "auto" and val is None:
            # No held-out queries (too few labels): nothing tells whether stage 2 carries over to other
            # queries, so keep the weights half way between the two stages (docs/ablations.md).
            shrink = self.HALF_WAY
        elif shrink == "auto" and cfg.supervised_fallback == "corpus-only":
            # The fallback compares the result with the corpus-only adaptor on these held-out queries,
            # so the shrink need not ask for evidence beyond noise: the best grid value on them is kept
            # (on honest held-out queries the half-way default cost 0.02-0.04; docs/ablations.md, session 20).
            shrink = "validated"
        if state.diverged is None and shrink != 1.0:
            state.shrink = self._shrink_toward(start, shrink, val, state)
        return state

    SHRINK_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
    HALF_WAY = 0.5  # supervised_shrink="auto": kept unless held-out queries show the full stage 2 is better
    EVIDENCE_Z = 1.645  # one-sided 95 %: the gain the held-out queries must show, in standard errors

    @torch.no_grad()
    def _shrink_toward(self, start: dict, shrink: float | str, val, state: TrainState) -> float:
        """Move the weights back toward ``start``: theta = start + shrink * (now - start).

        Interpolating the raw parameters keeps one network of the same shape (the rotation's
        skew-symmetric generator interpolates to another rotation). ``shrink="validated"`` picks the grid
        value with the best held-out score (ties: the larger shrink, i.e. the trained weights); with
        no held-out queries it keeps the trained weights. ``shrink="auto"`` (with held-out queries)
        keeps the trained weights only when their paired gain over the half-way weights, per held-out
        query (nDCG@10, mean over dims), exceeds ``EVIDENCE_Z`` standard errors, else the half-way
        ones: a gain the held-out queries cannot tell from noise is not evidence that stage 2 carries
        over (docs/ablations.md). Returns the shrink applied.
        """
        end = copy.deepcopy(self.net.state_dict())

        def load(lam: float) -> None:
            self.net.load_state_dict(interpolate_weights(start, end, lam))

        if shrink == "auto":
            val()
            full = self.last_val_by_query
            load(self.HALF_WAY)
            val()
            state.shrink_evidence = paired_evidence(full - self.last_val_by_query, self.EVIDENCE_Z,
                                                    self.groups_of(self.labelled_split()[1]))
            keep_full = state.shrink_evidence.pop("beyond_noise")
            if keep_full:
                self.net.load_state_dict(end)  # exactly the trained weights
            return 1.0 if keep_full else self.HALF_WAY
        if shrink == "validated":
            if val is None:
                return 1.0
            scores = {}
            for lam in self.SHRINK_GRID:
                load(lam)
                scores[lam] = val()
            shrink = max(self.SHRINK_GRID, key=lambda lam: (scores[lam], lam))
            state.shrink_scores = {"val_ndcg@10_by_shrink": {str(lam): v for lam, v in scores.items()},
                                   "held_out_queries": len(self.last_val_by_query)}
        load(shrink)
        return float(shrink)
