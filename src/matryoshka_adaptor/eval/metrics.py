"""Retrieval metrics with pytrec_eval (trec_eval's own code): nDCG@10, Recall@100, MRR@10."""

from __future__ import annotations

import numpy as np


def evaluate_run(
    qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]], *, ndcg_k: int = 10,
    recall_k: int = 100, mrr_k: int = 10,
) -> dict[str, float]:
    """Mean metrics over the queries in ``qrels`` (a query missing from the run scores 0).

    MRR@k is trec_eval's reciprocal rank on the run cut to its top k.
    """
    import pytrec_eval

    qrels = {q: {d: int(g) for d, g in docs.items()} for q, docs in qrels.items()}
    full_run = {q: dict(run.get(q, {})) or {"__none__": 0.0} for q in qrels}
    # trec_eval's order: score descending, ties by doc id descending.
    cut_run = {q: dict(sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:mrr_k])
               for q, docs in full_run.items()}
    main = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{ndcg_k}", f"recall.{recall_k}"}).evaluate(full_run)
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut_run)
    return {
        f"ndcg@{ndcg_k}": float(np.mean([main[q][f"ndcg_cut_{ndcg_k}"] for q in qrels])),
        f"recall@{recall_k}": float(np.mean([main[q][f"recall_{recall_k}"] for q in qrels])),
        f"mrr@{mrr_k}": float(np.mean([rr[q]["recip_rank"] for q in qrels])),
    }
