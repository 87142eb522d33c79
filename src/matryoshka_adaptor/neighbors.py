"""Nearest-neighbour search by cosine (inner product of unit vectors).

Exact search is blockwise: at most ``block_rows x block_cols`` similarities exist
at once, and a running top-k is merged per block, so a 1M-row corpus never
builds an n x n matrix; the numpy version needs no torch, the torch version runs on the
fit's device. An approximate faiss index is available for very large
corpora, with its recall against exact search measured on a sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm


@dataclass
class NeighborResult:
    indices: np.ndarray  # (n_queries, k) int64 row numbers in the corpus, best first
    scores: np.ndarray  # (n_queries, k) float32 cosine similarities
    method: str = "exact"
    recall_at_k: float | None = None  # approximate methods: measured recall vs exact on a sample


def _merge_topk(best_i, best_s, new_i, new_s, k):
    idx = np.concatenate([best_i, new_i], axis=1)
    sc = np.concatenate([best_s, new_s], axis=1)
    if sc.shape[1] > k:
        part = np.argpartition(-sc, k - 1, axis=1)[:, :k]
        idx = np.take_along_axis(idx, part, axis=1)
        sc = np.take_along_axis(sc, part, axis=1)
    return idx, sc


def _neighbours_available(k: int, n_corpus: int, exclude) -> int:
    """k capped by the corpus size (one row fewer when each query's own row is excluded)."""
    k_eff = min(k, n_corpus - (1 if exclude is not None else 0))
    if k_eff <= 0:
        raise ValueError(f"cannot find {k} neighbours in a corpus of {n_corpus} vectors")
    return k_eff


def exact_topk(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int,
    *,
    exclude: np.ndarray | None = None,
    block_rows: int = 2048,
    block_cols: int = 65536,
    progress: bool = False,
    desc: str = "exact search",
) -> NeighborResult:
    """Top-k corpus rows by inner product for each query row (inputs should be unit length).

    ``exclude`` (n_queries,) gives for each query one corpus row to skip (itself,
    when queries are corpus rows), or -1 for none.
    """
    nq, nc = queries.shape[0], corpus.shape[0]
    k_eff = _neighbours_available(k, nc, exclude)
    out_i = np.empty((nq, k_eff), dtype=np.int64)
    out_s = np.empty((nq, k_eff), dtype=np.float32)
    bar = tqdm(total=nq, desc=desc, disable=not progress, unit="q")
    for qs in range(0, nq, block_rows):
        qe = min(qs + block_rows, nq)
        q = np.asarray(queries[qs:qe], dtype=np.float32)
        best_i = np.empty((qe - qs, 0), dtype=np.int64)
        best_s = np.empty((qe - qs, 0), dtype=np.float32)
        for cs in range(0, nc, block_cols):
            ce = min(cs + block_cols, nc)
            s = q @ np.asarray(corpus[cs:ce], dtype=np.float32).T
            if exclude is not None:
                ex = exclude[qs:qe]
                rows = np.flatnonzero((ex >= cs) & (ex < ce))
                s[rows, ex[rows] - cs] = -np.inf
            kk = min(k_eff, ce - cs)
            part = np.argpartition(-s, kk - 1, axis=1)[:, :kk] if kk < s.shape[1] else np.tile(np.arange(ce - cs), (qe - qs, 1))
            best_i, best_s = _merge_topk(best_i, best_s, part + cs, np.take_along_axis(s, part, axis=1), k_eff)
        order = np.argsort(-best_s, axis=1, kind="stable")
        out_i[qs:qe] = np.take_along_axis(best_i, order, axis=1)
        out_s[qs:qe] = np.take_along_axis(best_s, order, axis=1)
        bar.update(qe - qs)
    bar.close()
    return NeighborResult(out_i, out_s, "exact")


def torch_topk(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int,
    *,
    exclude: np.ndarray | None = None,
    device: str = "cpu",
    block_rows: int = 2048,
    block_cols: int = 65536,
    progress: bool = False,
    desc: str = "exact search",
) -> NeighborResult:
    """Exact top-k like ``exact_topk``, with torch on ``device`` (a GPU when fitting on one).

    The corpus moves to the device once; each block of queries scores one block of columns
    at a time and keeps a running top-k (torch.topk instead of numpy's argpartition, which is
    the slow part on CPU).
    """
    import torch

    nq, nc = queries.shape[0], corpus.shape[0]
    k_eff = _neighbours_available(k, nc, exclude)
    c = torch.as_tensor(np.ascontiguousarray(corpus, dtype=np.float32), device=device)
    out_i = np.empty((nq, k_eff), dtype=np.int64)
    out_s = np.empty((nq, k_eff), dtype=np.float32)
    bar = tqdm(total=nq, desc=desc, disable=not progress, unit="q")
    with torch.inference_mode():
        for qs in range(0, nq, block_rows):
            qe = min(qs + block_rows, nq)
            q = torch.as_tensor(np.ascontiguousarray(queries[qs:qe], dtype=np.float32), device=device)
            best_s = torch.empty((qe - qs, 0), device=device)
            best_i = torch.empty((qe - qs, 0), dtype=torch.long, device=device)
            ex = None if exclude is None else torch.as_tensor(exclude[qs:qe], device=device)
            for cs in range(0, nc, block_cols):
                ce = min(cs + block_cols, nc)
                sc = q @ c[cs:ce].T
                if ex is not None:
                    rows = torch.nonzero((ex >= cs) & (ex < ce)).flatten()
                    sc[rows, ex[rows] - cs] = -torch.inf
                top = sc.topk(min(k_eff, ce - cs), dim=1)
                best_s = torch.cat([best_s, top.values], 1)
                best_i = torch.cat([best_i, top.indices + cs], 1)
                if best_s.shape[1] > k_eff:
                    keep = best_s.topk(k_eff, dim=1)
                    best_s, best_i = keep.values, best_i.gather(1, keep.indices)
            order = best_s.argsort(dim=1, descending=True, stable=True)
            out_s[qs:qe] = best_s.gather(1, order).cpu().numpy()
            out_i[qs:qe] = best_i.gather(1, order).cpu().numpy()
            bar.update(qe - qs)
    bar.close()
    return NeighborResult(out_i, out_s, "exact")


def faiss_topk(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int,
    *,
    exclude: np.ndarray | None = None,
    recall_sample: int = 1000,
    seed: int = 0,
    hnsw_m: int = 32,
    ef_search: int = 128,
) -> NeighborResult:
    """Approximate top-k with a faiss HNSW index (inner product); recall vs exact on a sample."""
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(
            "faiss is not installed; `pip install 'matryoshka-adaptor[ann]'` or use neighbor_search='exact'."
        ) from exc
    d = corpus.shape[1]
    index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 80
    index.add(np.ascontiguousarray(corpus, dtype=np.float32))
    index.hnsw.efSearch = ef_search
    extra = 1 if exclude is not None else 0
    scores, indices = index.search(np.ascontiguousarray(queries, dtype=np.float32), k + extra)
    if exclude is not None:
        keep = indices != exclude[:, None]
        # Drop the self match (or the last column when self was not returned).
        keep[keep.sum(1) > k, -1] = False
        indices = indices[keep].reshape(len(queries), k)
        scores = scores[keep].reshape(len(queries), k)
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(queries), size=min(recall_sample, len(queries)), replace=False)
    ref = exact_topk(queries[sample], corpus, k, exclude=None if exclude is None else exclude[sample])
    hits = sum(len(set(a) & set(b)) for a, b in zip(indices[sample], ref.indices))
    recall = hits / ref.indices.size
    return NeighborResult(indices.astype(np.int64), scores.astype(np.float32), "faiss-hnsw", recall)


# Prefix search of PCA-ordered vectors: candidates per wanted neighbour from the leading
# coordinates, re-ranked exactly (recall measured on a sample and reported).
PREFIX_SEARCH_DIMS = 256
PREFIX_CANDIDATES_PER_NEIGHBOUR = 10


def prefix_rerank_topk(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int,
    *,
    prefix_dims: int = PREFIX_SEARCH_DIMS,
    candidates: int | None = None,
    exclude: np.ndarray | None = None,
    device: str = "cpu",
    block_rows: int = 256,
    check_rows: int = 256,
    seed: int = 0,
    progress: bool = False,
) -> NeighborResult:
    """Top-k of PCA-ordered unit vectors: exact top-``candidates`` on the leading ``prefix_dims``
    coordinates, re-ranked by the full inner product. ``recall_at_k`` is measured against full exact
    search on ``check_rows`` random queries.

    The leading PCA coordinates carry most of each vector's energy, so the prefix finds the true
    neighbours among a few times k candidates at ``prefix_dims / d`` of the cost of exact search.
    """
    import torch

    nq, nc = queries.shape[0], corpus.shape[0]
    k_eff = _neighbours_available(k, nc, exclude)
    p = min(prefix_dims, corpus.shape[1])
    n_cand = min(candidates or PREFIX_CANDIDATES_PER_NEIGHBOUR * k_eff, nc - (1 if exclude is not None else 0))
    short = torch_topk(np.ascontiguousarray(queries[:, :p]), np.ascontiguousarray(corpus[:, :p]), n_cand,
                       exclude=exclude, device=device, progress=progress, desc="mining neighbours (prefix)")
    c = torch.as_tensor(np.ascontiguousarray(corpus, dtype=np.float32), device=device)
    out_i = np.empty((nq, k_eff), dtype=np.int64)
    out_s = np.empty((nq, k_eff), dtype=np.float32)
    with torch.inference_mode():
        for s in range(0, nq, block_rows):
            e = min(s + block_rows, nq)
            q = torch.as_tensor(np.ascontiguousarray(queries[s:e], dtype=np.float32), device=device)
            cand = torch.as_tensor(short.indices[s:e], device=device)
            sc = torch.einsum("bd,bcd->bc", q, c[cand])
            top = sc.topk(k_eff, dim=1)  # sorted, best first
            out_s[s:e] = top.values.cpu().numpy()
            out_i[s:e] = cand.gather(1, top.indices).cpu().numpy()
    rows = np.sort(np.random.default_rng(seed).choice(nq, size=min(check_rows, nq), replace=False))
    truth = torch_topk(queries[rows], corpus, k_eff, exclude=None if exclude is None else exclude[rows],
                       device=device).indices
    recall = float(np.mean([len(set(a) & set(b)) / k_eff for a, b in zip(truth, out_i[rows])]))
    return NeighborResult(out_i, out_s, f"exact-prefix{p}-rerank", recall)


def mine_neighbors(
    anchors: np.ndarray,
    corpus: np.ndarray,
    k: int,
    *,
    exclude: np.ndarray | None = None,
    method: str = "auto",
    progress: bool = False,
    seed: int = 0,
    device: str | None = None,
    pca_ordered: bool = False,
) -> NeighborResult:
    """Neighbours of ``anchors`` in ``corpus`` by cosine.

    'exact' runs blockwise with torch on ``device`` when given (the fit's device), else numpy.
    'auto' is exact up to 4e12 multiply-adds (a 50,000-row fit sample of 1,536-dim vectors, where
    exact search was still faster than building an HNSW index: docs/ablations.md, "Engineering
    choices"); beyond, :func:`prefix_rerank_topk` when the vectors are ``pca_ordered`` (the fit
    rotated them by its PCA start), else faiss when installed.
    """
    if method not in ("auto", "exact", "faiss"):
        raise ValueError(f"neighbor search must be 'auto', 'exact' or 'faiss'; got {method!r}")
    if method == "auto":
        work = float(anchors.shape[0]) * corpus.shape[0] * corpus.shape[1]
        method = "exact"
        if work > 4e12 and pca_ordered:
            return prefix_rerank_topk(anchors, corpus, k, exclude=exclude, device=device or "cpu", seed=seed,
                                      progress=progress)
        if work > 4e12:
            try:
                import faiss  # noqa: F401

                method = "faiss"
            except ImportError:
                pass
    if method == "faiss":
        return faiss_topk(anchors, corpus, k, exclude=exclude, seed=seed)
    if device is not None:
        return torch_topk(anchors, corpus, k, exclude=exclude, device=device, progress=progress,
                          desc="mining neighbours")
    return exact_topk(anchors, corpus, k, exclude=exclude, progress=progress, desc="mining neighbours")


def _unit_block(corpus, start: int, stop: int) -> np.ndarray:
    block = np.asarray(corpus[start:stop], dtype=np.float32)
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    return block / np.maximum(norms, 1e-12)


def streamed_topk(
    anchors: np.ndarray,
    corpus: np.ndarray,
    k: int,
    *,
    exclude: np.ndarray | None = None,
    block_cols: int = 65536,
    device: str | None = None,
    progress: bool = False,
) -> NeighborResult:
    """Exact top-k of unit ``anchors`` among all rows of a (memory-mapped, unnormalised) ``corpus``.

    The corpus is read ``block_cols`` rows at a time and normalised block by block, so only one
    block is in memory; ``exclude`` gives each anchor's own corpus row (-1 for none).
    """
    n = corpus.shape[0]
    k_eff = _neighbours_available(k, n, exclude)
    best_i = np.empty((len(anchors), 0), dtype=np.int64)
    best_s = np.empty((len(anchors), 0), dtype=np.float32)
    bar = tqdm(total=n, desc="mining neighbours (whole corpus)", disable=not progress, unit="row")
    for cs in range(0, n, block_cols):
        ce = min(cs + block_cols, n)
        block = _unit_block(corpus, cs, ce)
        ex = None
        if exclude is not None:
            ex = np.where((exclude >= cs) & (exclude < ce), exclude - cs, -1)
        kk = min(k_eff, ce - cs - (1 if ex is not None and ce - cs > 1 else 0))
        if kk < 1:
            bar.update(ce - cs)
            continue
        if device is not None:
            part = torch_topk(anchors, block, kk, exclude=ex, device=device)
        else:
            part = exact_topk(anchors, block, kk, exclude=ex)
        best_i, best_s = _merge_topk(best_i, best_s, part.indices + cs, part.scores, k_eff)
        bar.update(ce - cs)
    bar.close()
    order = np.argsort(-best_s, axis=1, kind="stable")
    return NeighborResult(np.take_along_axis(best_i, order, 1), np.take_along_axis(best_s, order, 1), "exact")


def ivf_topk(
    anchors: np.ndarray,
    corpus: np.ndarray,
    k: int,
    *,
    exclude: np.ndarray | None = None,
    train_rows: np.ndarray | None = None,
    nprobe: int = 32,
    block_cols: int = 65536,
    recall_sample: int = 500,
    seed: int = 0,
    progress: bool = False,
) -> NeighborResult:
    """Approximate top-k over a large (memory-mapped) corpus with a faiss IVF index, added block by block.

    The index has ~4 sqrt(n) lists trained on ``train_rows`` (e.g. the fit sample); recall@k
    against ``streamed_topk`` is measured on ``recall_sample`` anchors and returned.
    """
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(
            "faiss is not installed; `pip install 'matryoshka-adaptor[ann]'` or use neighbor_search='exact'."
        ) from exc
    n, d = corpus.shape
    rng = np.random.default_rng(seed)
    nlist = int(max(1, min(4 * np.sqrt(n), n // 39)))
    if train_rows is None:
        train_rows = np.sort(rng.choice(n, size=min(n, 50 * nlist), replace=False))
    train = _unit_block(np.asarray(corpus[np.sort(train_rows)]), 0, len(train_rows))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(train)
    bar = tqdm(total=n, desc="indexing corpus (faiss IVF)", disable=not progress, unit="row")
    for cs in range(0, n, block_cols):
        ce = min(cs + block_cols, n)
        index.add(_unit_block(corpus, cs, ce))
        bar.update(ce - cs)
    bar.close()
    index.nprobe = min(nprobe, nlist)
    extra = 1 if exclude is not None else 0
    scores, indices = index.search(np.ascontiguousarray(anchors, dtype=np.float32), k + extra)
    if exclude is not None:
        keep = indices != exclude[:, None]
        keep[keep.sum(1) > k, -1] = False
        indices = indices[keep].reshape(len(anchors), k)
        scores = scores[keep].reshape(len(anchors), k)
    sample = rng.choice(len(anchors), size=min(recall_sample, len(anchors)), replace=False)
    ref = streamed_topk(anchors[sample], corpus, k, exclude=None if exclude is None else exclude[sample],
                        block_cols=block_cols)
    hits = sum(len(set(a) & set(b)) for a, b in zip(indices[sample], ref.indices))
    return NeighborResult(indices.astype(np.int64), scores.astype(np.float32), "faiss-ivf", hits / ref.indices.size)


def neighbors_in_corpus(
    corpus: np.ndarray,
    sample_rows: np.ndarray,
    sample: np.ndarray,
    k: int,
    *,
    queries: np.ndarray | None = None,
    method: str = "auto",
    device: str | None = None,
    progress: bool = False,
    seed: int = 0,
) -> tuple[np.ndarray, NeighborResult, NeighborResult | None]:
    """Neighbours of a fit sample's anchors (and of queries) mined in the *whole* corpus.

    When a corpus is sampled for fitting, neighbours mined inside the sample are not the true
    ones (at 1M rows and a 50k sample an anchor's "top-10" are its top ~200). Here the sampled
    rows (and the queries) search every row of ``corpus``, streamed block by block from the
    (memory-mapped) array, and the neighbour rows found outside the sample are appended to it.

    Returns ``(table, corpus_neighbors, query_neighbors)``: ``table`` is the unit-length sample
    followed by the extra neighbour rows, and the indices of both results point into ``table``
    (so the first ``len(sample)`` rows keep their positions). ``method``: "exact" streams exact
    blockwise search (torch on ``device`` when given), "faiss" a faiss IVF index with its recall
    measured, "auto" exact up to 4e12 multiply-adds.
    """
    n, d = corpus.shape
    anchors = sample if queries is None else np.concatenate([sample, queries])
    exclude = np.concatenate([sample_rows, np.full(0 if queries is None else len(queries), -1)]).astype(np.int64)
    if method == "auto":
        method = "exact" if float(len(anchors)) * n * d <= 4e12 else "faiss"
    if method == "faiss":
        res = ivf_topk(anchors, corpus, k, exclude=exclude, train_rows=sample_rows, seed=seed, progress=progress)
    else:
        res = streamed_topk(anchors, corpus, k, exclude=exclude, device=device, progress=progress)
    position = np.full(n, -1, dtype=np.int64)
    position[sample_rows] = np.arange(len(sample_rows))
    found = np.unique(res.indices)
    extra = found[position[found] < 0]
    position[extra] = len(sample_rows) + np.arange(len(extra))
    table = np.concatenate([sample, _unit_block(np.asarray(corpus[extra]), 0, len(extra))]) if len(extra) else sample
    idx = position[res.indices]
    m = len(sample)
    corpus_nb = NeighborResult(idx[:m], res.scores[:m], res.method, res.recall_at_k)
    query_nb = None if queries is None else NeighborResult(idx[m:], res.scores[m:], res.method, res.recall_at_k)
    return table, corpus_nb, query_nb


@dataclass
class TrainingNeighbors:
    """The neighbours a fit trains on, mined once on the original full-dim vectors.

    Attributes
    ----------
    corpus : ndarray of shape (c, d)
        The unit corpus rows training uses: the sample, or (neighbours mined in the whole corpus)
        the sample followed by the neighbour rows found outside it. Its first ``len(sample)``
        rows are the sample's, in order.
    anchors : ndarray of shape (a, d)
        The corpus sample's rows, then the queries when they are used as unlabelled anchors.
    n_corpus_anchors : int
        How many leading anchors are corpus rows.
    indices, scores : ndarray of shape (a, k)
        Each anchor's top-k rows of ``corpus`` (itself excluded) and their cosines.
    hard_negatives : ndarray of shape (q, h) or None
        Each query's top-h rows of ``corpus`` (supervised fits with ``hard_negatives > 0``).
    method : str
        The search that ran ("exact", "faiss-hnsw" or "faiss-ivf").
    recall_at_k : float or None
        For approximate search: recall against exact search on a sample.
    """

    corpus: np.ndarray
    anchors: np.ndarray
    n_corpus_anchors: int
    indices: np.ndarray
    scores: np.ndarray
    hard_negatives: np.ndarray | None
    method: str
    recall_at_k: float | None


def mine_training_neighbors(
    sample: np.ndarray,
    queries: np.ndarray | None,
    k: int,
    *,
    use_queries: bool,
    hard_negatives: int = 0,
    method: str = "auto",
    progress: bool = False,
    seed: int = 0,
    device: str | None = None,
    whole_corpus: np.ndarray | None = None,
    sample_rows: np.ndarray | None = None,
    pca_ordered: bool = False,
) -> TrainingNeighbors:
    """Every neighbour search of a fit: the corpus sample's own top-k, the queries' top-k (when
    ``use_queries``) and each query's top ``hard_negatives`` rows (when > 0).

    They are searched in ``sample``; or, given ``whole_corpus`` (the full, possibly memory-mapped
    corpus) and ``sample_rows`` (the sample's row numbers in it), the sample's and queries'
    neighbours are searched in every corpus row (:func:`neighbors_in_corpus`) and the rows found
    outside the sample are appended to the training rows (``TrainingNeighbors.corpus``).
    ``pca_ordered``: the sample and queries are PCA-rotated (see :func:`mine_neighbors`).
    """
    opts = dict(method=method, progress=progress, seed=seed, device=device)
    with_queries = queries is not None and use_queries
    if whole_corpus is not None:
        if sample_rows is None:
            raise ValueError("sample_rows must be given with whole_corpus")
        table, nb, qnb = neighbors_in_corpus(whole_corpus, sample_rows, sample, k,
                                             queries=queries if with_queries else None, **opts)
    else:
        table = sample
        opts["pca_ordered"] = pca_ordered
        nb = mine_neighbors(sample, sample, k, exclude=np.arange(len(sample)), **opts)
        qnb = mine_neighbors(queries, sample, k, **opts) if with_queries else None
    anchors, idx, sims = sample, nb.indices, nb.scores
    if qnb is not None:
        anchors = np.concatenate([sample, queries])
        idx = np.concatenate([idx, qnb.indices])
        sims = np.concatenate([sims, qnb.scores])
    hard = None
    if queries is not None and hard_negatives > 0:
        hard = mine_neighbors(queries, table, min(hard_negatives, len(table)), **opts).indices
    return TrainingNeighbors(table, anchors, len(sample), idx, sims, hard, nb.method, nb.recall_at_k)
