"""Exact cosine retrieval, blockwise (a 1M-document corpus never needs an n x n matrix)."""

from __future__ import annotations

import numpy as np

from ..neighbors import exact_topk


def retrieve(
    query_vecs: np.ndarray,
    corpus_vecs: np.ndarray,
    query_ids: list[str],
    corpus_ids: list[str],
    *,
    top_k: int = 100,
    ignore_identical_ids: bool = True,
) -> dict[str, dict[str, float]]:
    """Top-k documents per query as a run ``{query_id: {doc_id: score}}`` (vectors unit length).

    As in BEIR's evaluator, a document whose id equals the query's id is dropped
    (ArguAna and Quora contain the query itself in the corpus).
    """
    extra = 1 if ignore_identical_ids else 0
    res = exact_topk(query_vecs, corpus_vecs, min(top_k + extra, len(corpus_ids)))
    run: dict[str, dict[str, float]] = {}
    for qi, qid in enumerate(query_ids):
        hits: dict[str, float] = {}
        for ci, score in zip(res.indices[qi], res.scores[qi]):
            did = corpus_ids[ci]
            if ignore_identical_ids and did == qid:
                continue
            hits[did] = float(score)
            if len(hits) == top_k:
                break
        run[qid] = hits
    return run


def run_from_ranking(
    indices: np.ndarray, query_ids: list[str], corpus_ids: list[str], *, top_k: int = 100,
    ignore_identical_ids: bool = True,
) -> dict[str, dict[str, float]]:
    """A run from ranked corpus rows (best first), scored by rank so the evaluator keeps this order.

    trec_eval orders tied scores by document id, which would override a deliberate tie-break
    (Hamming distances tie often): scores here are ``top_k - rank``, all distinct.
    """
    run: dict[str, dict[str, float]] = {}
    for qi, qid in enumerate(query_ids):
        hits: dict[str, float] = {}
        for ci in indices[qi]:
            did = corpus_ids[ci]
            if ignore_identical_ids and did == qid:
                continue
            hits[did] = float(top_k - len(hits))
            if len(hits) == top_k:
                break
        run[qid] = hits
    return run
