"""Supervised fits whose small prefixes also learn from the adapted full-dim ranking (dev splits only).

    python benchmarks/self_distill_dev.py --dataset scifact --arms base self-rank self-listwise --seeds 0,1

Why: with all SciFact labels the supervised adaptor's full 384 dims reach ~0.69 nDCG@10 on dev while its
16-dim prefix stays near 0.49 (issue 17 target 3: 0.55 at 16 dims on test). In stage 2 the small
prefixes learn from the labels (the ranking loss, every dim) and from the *original* vectors' ranking
(the listwise term's target), never from what the supervised full-dim vectors have learned. Arms (the
``self-rank`` patch lives in this script only):

- ``base``: the library's fit;
- ``self-rank[:W]``: stage 2 adds W (default 1) x KL(softmax(cos_d(q', D') / T) || softmax(cos_m(q', D') / T))
  over each labelled query's pool (the ranking loss's documents), for every trained dim m < d, the
  full-dim target detached: each prefix imitates the adapted full vector's ranking of that pool;
- ``self-listwise``: in stage 2 the listwise term's target is the adapted full-dim cosines (detached)
  instead of the original vectors' (in stage 1 both are the same up to the reconstruction's slack):
  the library's ``supervised_listwise_target="adapted"``, which this arm sets.

Scored on the dev queries of ``topic_holdout_dev.load_dev_data`` (SciFact: 30 % of the train queries;
NFCorpus: dev; XQuAD-R: questions of 7 held-out train articles). The test split is never read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from matryoshka_adaptor import MatryoshkaAdaptor
from matryoshka_adaptor.eval.label_curve import label_subset
from matryoshka_adaptor.eval.metrics import evaluate_run
from matryoshka_adaptor.eval.retrieval import retrieve
from matryoshka_adaptor.nn import losses, training

from dev_splits import add_dev_set_arguments
from topic_holdout_dev import DIMS, load_dev_data

ARMS = ("base", "self-rank", "self-listwise")


def full_dim_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return losses.prefix_cosine_matrix(a, b, (a.shape[1],))[0]


def self_rank_term(weight: float):
    def term(b: training.SupervisedBatch) -> torch.Tensor:
        rank = training._ranking_term(b)
        small = tuple(m for m in b.dims if m < b.queries.shape[1])
        if not small:
            return rank
        target = full_dim_cosines(b.queries, b.docs).detach()
        distill = losses.listwise_distillation_loss(b.queries, b.docs, target, small,
                                                    temperature=b.config.temperature)
        return rank + weight * distill

    return term


def patched_terms(arm: str, original):
    kind, _, arg = arm.partition(":")
    if kind == "self-rank":
        fn = self_rank_term(float(arg) if arg else 1.0)
        return tuple(dataclasses.replace(t, fn=fn) if t.name == "rank" else t for t in original)
    return original


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dev_set_arguments(ap)
    ap.add_argument("--arms", nargs="+", default=list(ARMS))
    ap.add_argument("--params", default="", help="extra MatryoshkaAdaptor keywords, e.g. \"supervised_steps=2000\"")
    ap.add_argument("--out", default="results/self_distill_dev.jsonl")
    args = ap.parse_args()
    for arm in args.arms:
        kind, _, arg = arm.partition(":")
        if kind not in ARMS or (arg and kind != "self-rank"):
            raise SystemExit(f"unknown arm {arm!r}: use base, self-rank[:W] or self-listwise")
    C, cid, qvec, fit_qrels, dev = load_dev_data(args.dataset, Path(args.data_dir))
    dev_q = list(dev)
    Qdev = np.stack([qvec[q] for q in dev_q])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    params = eval(f"dict({args.params})")  # a research script's own command line, as in ablation_dev.py
    original_terms = training.LOSS_TERMS
    for seed in (int(s) for s in args.seeds.split(",")):
        fit_q = list(fit_qrels) if args.labels is None else label_subset(list(fit_qrels), fit_qrels, args.labels, seed)
        for arm in args.arms:
            training.LOSS_TERMS = patched_terms(arm, original_terms)
            t = time.perf_counter()
            arm_params = {"supervised_listwise_target": "adapted"} if arm == "self-listwise" else {}
            est = MatryoshkaAdaptor(dims=DIMS, progress=False, seed=seed, **params, **arm_params)
            est.fit(C, np.stack([qvec[q] for q in fit_q]), {q: fit_qrels[q] for q in fit_q}, corpus_ids=cid,
                    query_ids=fit_q)
            training.LOSS_TERMS = original_terms
            run = {m: retrieve(est.transform(Qdev, m), est.transform(C, m), dev_q, cid) for m in DIMS}
            row = [round(evaluate_run(dev, run[m])["ndcg@10"], 4) for m in DIMS]
            sup = est.fit_summary_.get("supervised", {})
            rec = dict(dataset=args.dataset, labels=args.labels or "all", seed=seed, arm=arm, params=args.params,
                       ndcg=dict(zip(DIMS, row)), fit_s=round(time.perf_counter() - t),
                       shrink=sup.get("shrink"), best_step=sup.get("best_step"),
                       evidence=sup.get("shrink_evidence"))
            with out.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"{args.dataset} labels={rec['labels']} seed={seed} {arm} {args.params}: {row} "
                  f"fit {rec['fit_s']} s, shrink {rec['shrink']}, best step {rec['best_step']}", flush=True)


if __name__ == "__main__":
    main()
