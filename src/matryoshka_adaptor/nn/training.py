"""Training loops: unsupervised (stage 1) and supervised (stage 2) with early stopping.

All data is moved to the device once; a step gathers its batch by index.
Validation is a retrieval score, not a loss, because the loss can keep falling
while the ranking the user cares about stops improving:
- stage 1: recall@k of each held-out anchor's full-dim top-k among the m-prefix top-k
  (logged only: it did not track query retrieval, see docs/ablations.md),
- stage 2: nDCG@10 of held-out training queries (graded gains), averaged over the
  Matryoshka dims; the best state seen is restored (early stopping).
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from . import losses
from .module import AdaptorNet


@dataclass
class LossWeights:
    """Weights of each loss term; the paper's objective is topk=1, pair=alpha, rec=beta, rank=gamma."""

    topk: float = 1.0
    pair: float = 1.0
    rec: float = 1.0
    listwise: float = 0.0
    rank: float = 1.0
    binary: float = 0.0  # listwise term on binarised prefixes (quantisation-aware; 0 = off)


@dataclass
class UnsupervisedData:
    """Anchors (corpus rows and, optionally, unlabeled queries) with full-dim neighbours in ``corpus``."""

    corpus: np.ndarray  # (n, d) unit vectors, the training sample of the corpus
    anchors: np.ndarray  # (a, d) unit vectors
    neighbor_idx: np.ndarray  # (a, k) rows of corpus
    neighbor_sims: np.ndarray  # (a, k) full-dim cosines
    corpus_anchors: int = 0  # the first anchors are corpus rows 0, 1, ... (the rest: queries)


@dataclass
class SupervisedData:
    queries: np.ndarray  # (q, d) unit vectors
    positives: list[list[tuple[int, float]]]  # per query: (corpus row, grade > 0)
    hard_negatives: np.ndarray | None = None  # (q, h) each query's top full-dim corpus rows


@dataclass
class TrainState:
    history: list[dict] = field(default_factory=list)
    best_step: int = 0
    best_score: float = -math.inf
    initial_score: float | None = None
    steps_run: int = 0


def listwise_pool_mask(anchor_ids: torch.Tensor, pool_rows: torch.Tensor, n_corpus_anchors: int) -> torch.Tensor:
    """(B, B + P) candidates valid for each anchor in the pool [anchors, corpus rows ``pool_rows``].

    Anchor ids below ``n_corpus_anchors`` are corpus rows; the rest are queries. An anchor's own
    vector, met as itself or as its corpus row in another anchor's neighbour list, is masked out:
    it would take most of the target mass and teach nothing.
    """
    anchor_key = torch.where(anchor_ids < n_corpus_anchors, anchor_ids, -1 - anchor_ids)
    pool_key = torch.cat([anchor_key, pool_rows])
    return pool_key[None, :] != anchor_key[:, None]


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


def _split(n: int, fraction: float, rng: np.random.Generator, cap: int) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    n_val = min(cap, int(round(n * fraction))) if n >= 20 else 0
    return perm[n_val:], perm[:n_val]


class Trainer:
    """Runs the optimisation of an ``AdaptorNet``; one instance per fit."""

    def __init__(
        self,
        net: AdaptorNet,
        dims: tuple[int, ...],
        weights: LossWeights,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        batch_size: int = 128,
        temperature: float = 0.05,
        rank_scale: float = 1.0,
        random_negatives: int = 64,
        listwise_negatives: int = 0,
        query_fraction: float = 0.0,
        ema_decay: float = 0.0,
        dynamic_negatives: int = 0,
        max_positives: int = 8,
        validation_fraction: float = 0.1,
        eval_every: int = 100,
        patience: int = 5,
        seed: int = 0,
        device: str = "cpu",
        progress: bool = True,
    ):
        self.net = net.to(device)
        self.dims = dims
        self.w = weights
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.temperature = temperature
        self.rank_scale = rank_scale
        self.random_negatives = random_negatives
        self.listwise_negatives = listwise_negatives
        self.query_fraction = query_fraction
        self.ema_decay = ema_decay
        self.dynamic_negatives = dynamic_negatives
        self.max_positives = max_positives
        self.validation_fraction = validation_fraction
        self.eval_every = eval_every
        self.patience = patience
        self.device = device
        self.progress = progress
        self.rng = np.random.default_rng(seed)
        self._hard: np.ndarray | None = None
        self._dynamic_hard: np.ndarray | None = None
        self.gen = torch.Generator(device="cpu").manual_seed(seed)

    # ----------------------------------------------------------------- helpers
    def _t(self, x: np.ndarray, dtype=torch.float32) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype, device=self.device)

    def _randint(self, high: int, size: int) -> torch.Tensor:
        return torch.randint(high, (size,), generator=self.gen).to(self.device)

    def _anchor_sampler(self, ids: np.ndarray, size: int, query_fraction: float):
        """Draws a batch of anchor ids, at least a ``query_fraction`` share of them query anchors.

        Queries are often few next to documents (566 vs 5,183 on SciFact), yet query -> document
        order is what retrieval needs; a minimum share keeps them from being drowned out. Where
        queries already make up that share, anchors are drawn uniformly.
        """
        is_query = ids >= self._n_corpus_anchors
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

    def _unsupervised_loss(self, anchor_ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
        a = self._anchors[anchor_ids]
        nb_idx = self._nb_idx[anchor_ids]  # (B, k)
        b, k = nb_idx.shape
        rows = [nb_idx.reshape(-1)]
        if self.w.listwise and self.listwise_negatives:
            rows.append(self._randint(self._corpus.shape[0], self.listwise_negatives))
        pool_rows = torch.cat(rows)
        adapted, z = self.net(torch.cat([a, self._corpus[pool_rows]]))
        ad_a, z_a = adapted[:b], z[:b]
        # Targets are full-dim cosines: constants (a learned rotation leaves them unchanged).
        z_const = z.detach()
        z_a_const = z_const[:b]
        parts = {}
        total = adapted.new_zeros(())
        if self.w.topk:
            parts["topk"] = losses.topk_similarity_loss(ad_a, adapted[b : b + b * k].view(b, k, -1),
                                                        self._nb_sims[anchor_ids], self.dims)
            total = total + self.w.topk * parts["topk"]
        if self.w.pair:
            parts["pair"] = losses.pairwise_similarity_loss(ad_a, z_a_const @ z_a_const.T, self.dims)
            total = total + self.w.pair * parts["pair"]
        if self.w.rec:
            parts["rec"] = losses.reconstruction_loss(adapted, z)
            total = total + self.w.rec * parts["rec"]
        if self.w.listwise:
            # Pool = the batch's anchors, all their neighbours and `listwise_negatives` random corpus
            # rows: each anchor's own top-k are the positives, the others' neighbours are hard
            # negatives, the random rows stand for the rest of the corpus.
            mask = listwise_pool_mask(anchor_ids, pool_rows, self._n_corpus_anchors)
            parts["listwise"] = losses.listwise_distillation_loss(
                ad_a, adapted, z_a_const @ z_const.T, self.dims, temperature=self.temperature, mask=mask
            )
            total = total + self.w.listwise * parts["listwise"]
        if self.w.binary:
            parts["binary"] = losses.binary_listwise_distillation_loss(
                ad_a, adapted, z_a_const @ z_const.T, self.dims, temperature=self.temperature,
                mask=listwise_pool_mask(anchor_ids, pool_rows, self._n_corpus_anchors))
            total = total + self.w.binary * parts["binary"]
        return total, parts

    def _supervised_pool(self, query_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pool corpus rows, grades (B, pool), which pool docs act as each query's positive j).

        Pool: up to `max_positives` sampled positives of each batch query, random corpus rows,
        and each query's `hard_negatives` (its top full-dim neighbours). Every pool doc keeps its
        true grade for every query, so a sampled positive of one query is never counted as a
        negative of another that also judged it relevant. Only a query's own sampled positives
        act as j in the ranking pairs, which bounds the (dims x B x P x pool) tensor when queries
        have hundreds of judgements (NFCorpus).
        """
        sampled: list[list[int]] = []
        for q in query_ids:
            plist = self._positives[q]
            if len(plist) > self.max_positives:
                pick = self.rng.choice(len(plist), size=self.max_positives, replace=False)
                plist = [plist[i] for i in pick]
            sampled.append([r for r, _ in plist])
        other_rows = self.rng.integers(0, self._corpus.shape[0], size=self.random_negatives).tolist()
        if self._hard is not None:
            other_rows += self._hard[query_ids].reshape(-1).tolist()
        if self._dynamic_hard is not None:
            other_rows += self._dynamic_hard[query_ids].reshape(-1).tolist()
        pool_rows = np.unique(np.asarray([r for rows in sampled for r in rows] + other_rows, dtype=np.int64))
        col = {int(r): j for j, r in enumerate(pool_rows)}
        grades = np.zeros((len(query_ids), len(pool_rows)), dtype=np.float32)
        as_j = np.zeros_like(grades, dtype=bool)
        for i, q in enumerate(query_ids):
            for r, g in self._positives[q]:
                j = col.get(r)
                if j is not None:
                    grades[i, j] = g
            as_j[i, [col[r] for r in sampled[i]]] = True
        return pool_rows, grades, as_j

    def _supervised_loss(self, query_ids: np.ndarray) -> tuple[torch.Tensor, dict]:
        pool_rows, grades, as_j = self._supervised_pool(query_ids)
        docs = self._corpus[self._t(pool_rows, torch.long)]
        q_adapted, _ = self.net(self._queries[self._t(query_ids, torch.long)])
        d_adapted, _ = self.net(docs)
        loss = losses.ranking_loss(q_adapted, d_adapted, self._t(grades), self.dims, scale=self.rank_scale,
                                   positive_mask=self._t(as_j, torch.bool))
        return self.w.rank * loss, {"rank": loss}

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
    def _neighbor_recall(self, val_ids: torch.Tensor) -> float:
        """Mean over dims of recall of full-dim top-k among m-prefix top-k (held-out anchors)."""
        self.net.eval()
        corpus = self._adapt_all(self._corpus)
        anchors = self._adapt_all(self._anchors[val_ids])
        true = self._nb_idx[val_ids]
        k = true.shape[1]
        scores = []
        for m in self.dims:
            found = self._prefix_topk(anchors, corpus, m, k + 1)  # +1: an anchor may find itself
            hit = (found[:, :, None] == true[:, None, :]).any(1).float().mean()
            scores.append(hit.item())
        self.net.train()
        return float(np.mean(scores))

    @torch.no_grad()
    def _query_ndcg(self, val_queries: np.ndarray, k: int = 10) -> float:
        """Mean over dims of nDCG@k (linear gain) of held-out training queries: early stopping only."""
        self.net.eval()
        corpus = self._adapt_all(self._corpus)
        queries = self._adapt_all(self._queries[self._t(val_queries, torch.long)])
        n = corpus.shape[0]
        gains = torch.zeros(len(val_queries), n, device=self.device)
        for i, q in enumerate(val_queries):
            for r, g in self._positives[q]:
                gains[i, r] = g
        discount = 1.0 / torch.log2(torch.arange(2, k + 2, device=self.device, dtype=torch.float32))
        ideal = (gains.topk(min(k, n), dim=1).values * discount[: min(k, n)]).sum(1)
        scores = []
        for m in self.dims:
            top = self._prefix_topk(queries, corpus, m, min(k, n))
            dcg = (gains.gather(1, top) * discount[: top.shape[1]]).sum(1)
            scores.append((dcg / ideal.clamp_min(1e-12)).mean().item())
        self.net.train()
        return float(np.mean(scores))

    @torch.no_grad()
    def _mine_adapted_negatives(self, h: int, chunk: int = 128) -> np.ndarray:
        """Each query's top-h corpus rows by its mean m-prefix cosine in the *current* adapted space.

        Full-dim hard negatives are the documents the original model confuses; the ones that
        confuse short prefixes are different, and move as training goes, so they are re-mined
        every `eval_every` steps (as ANCE does for dense retrievers).
        """
        self.net.eval()
        corpus = self._adapt_all(self._corpus)
        queries = self._adapt_all(self._queries)
        out = []
        for s in range(0, queries.shape[0], chunk):
            scores = losses.prefix_cosine_matrix(queries[s : s + chunk], corpus, self.dims).mean(0)
            out.append(scores.topk(min(h, corpus.shape[0]), dim=1).indices.cpu().numpy())
        self.net.train()
        return np.concatenate(out)

    # ------------------------------------------------------------------- stages
    def _loop(self, steps: int, step_fn, val_fn, desc: str, *, early_stopping: bool = True,
              before_step=None) -> TrainState:
        state = TrainState()
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        best = copy.deepcopy(self.net.state_dict())
        state.best_score = val_fn() if val_fn else -math.inf
        state.initial_score = state.best_score if val_fn else None
        bad_evals = 0
        # Exponential moving average of the weights (Polyak averaging): the averaged weights are
        # the ones validated, kept and returned; the raw ones only take the optimiser's steps.
        ema = EMAWeights(self.net, self.ema_decay) if self.ema_decay else None
        bar = tqdm(range(1, steps + 1), desc=desc, disable=not self.progress, unit="step")
        for step in bar:
            if before_step is not None:
                # Outside the cache below: a no-grad pass inside it would leave the rotation
                # cached without its graph, and that step's loss would not train it.
                before_step(step)
            # One rotation per step: a parametrised (orthogonal) weight is computed once and
            # reused by every forward pass of the step instead of once per pass.
            with parametrize.cached():
                loss, parts = step_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update()
            state.steps_run = step
            if step % 20 == 0 or step == 1:
                bar.set_postfix(loss=f"{loss.item():.4f}", best=f"{state.best_score:.4f}")
            if val_fn and (step % self.eval_every == 0 or step == steps):
                with ema.swapped_in() if ema is not None else contextlib.nullcontext():
                    score = val_fn()
                    improved = score > state.best_score + 1e-5
                    if improved:  # inside: with EMA on, the averaged weights are the ones kept
                        best = copy.deepcopy(self.net.state_dict())
                state.history.append({"step": step, "loss": float(loss.item()), "val": score,
                                      **{k: float(v.item()) for k, v in parts.items()}})
                if improved:
                    state.best_score, state.best_step, bad_evals = score, step, 0
                else:
                    bad_evals += 1
                    if early_stopping and bad_evals >= self.patience:
                        break
        bar.close()
        if val_fn and early_stopping:
            self.net.load_state_dict(best)
        else:
            if ema is not None:
                ema.copy_to_model()
            state.best_step = state.steps_run
        return state

    def fit_unsupervised(self, data: UnsupervisedData, steps: int) -> TrainState:
        self._corpus = self._t(data.corpus)
        self._anchors = self._t(data.anchors)
        self._n_corpus_anchors = data.corpus_anchors
        self._nb_idx = self._t(data.neighbor_idx, torch.long)
        self._nb_sims = self._t(data.neighbor_sims)
        train_ids, val_ids = _split(len(data.anchors), self.validation_fraction, self.rng, cap=512)
        val_t = self._t(val_ids, torch.long)
        bs = min(self.batch_size, len(train_ids))
        draw = self._anchor_sampler(train_ids, bs, self.query_fraction)

        def step():
            return self._unsupervised_loss(draw())

        val = (lambda: self._neighbor_recall(val_t)) if len(val_ids) else None
        # Held-out neighbour recall is logged, not used to stop: in docs/ablations.md it did not
        # track query retrieval quality (it fell while dev nDCG rose), so stage 1 runs all its steps.
        return self._loop(steps, step, val, "fit (unsupervised)", early_stopping=False)

    def fit_supervised(self, unsup: UnsupervisedData, sup: SupervisedData, steps: int) -> TrainState:
        """Stage 2: gamma * L_rank on labeled queries plus the unsupervised terms on queries and corpus."""
        self._corpus = self._t(unsup.corpus)
        self._anchors = self._t(unsup.anchors)
        self._n_corpus_anchors = unsup.corpus_anchors
        self._nb_idx = self._t(unsup.neighbor_idx, torch.long)
        self._nb_sims = self._t(unsup.neighbor_sims)
        self._queries = self._t(sup.queries)
        self._positives = sup.positives
        self._hard = sup.hard_negatives
        self._dynamic_hard = None
        labeled = np.flatnonzero([len(p) > 0 for p in sup.positives])
        train_q, val_q = _split(len(labeled), self.validation_fraction, self.rng, cap=1000)
        train_q, val_q = labeled[train_q], labeled[val_q]
        bs = min(self.batch_size, len(train_q))
        n_anchors = len(unsup.anchors)
        # Uniform anchors here: a raised query share lowered dev nDCG in this stage (docs/ablations.md).
        draw_anchors = self._anchor_sampler(np.arange(n_anchors), min(self.batch_size, n_anchors), 0.0)

        def remine(step: int) -> None:
            if (step - 1) % self.eval_every == 0:
                self._dynamic_hard = self._mine_adapted_negatives(self.dynamic_negatives)

        def step():
            q = train_q[self.rng.choice(len(train_q), size=bs, replace=False)]
            loss, parts = self._supervised_loss(q)
            if any((self.w.topk, self.w.pair, self.w.rec, self.w.listwise, self.w.binary)):
                u_loss, u_parts = self._unsupervised_loss(draw_anchors())
                loss = loss + u_loss
                parts.update(u_parts)
            return loss, parts

        val = (lambda: self._query_ndcg(val_q)) if len(val_q) else None
        return self._loop(steps, step, val, "fit (supervised)",
                          before_step=remine if self.dynamic_negatives else None)
