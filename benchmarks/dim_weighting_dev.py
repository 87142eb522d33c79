"""Fits with the Matryoshka dims of one loss term weighted differently (dev splits only).

    python benchmarks/dim_weighting_dev.py --dataset xquad-r/el --arms uniform sqrt hinge:10
    python benchmarks/dim_weighting_dev.py --dataset nfcorpus --arms uniform sqrt --seeds 0,1
    python benchmarks/dim_weighting_dev.py --dataset scifact --term rank --arms uniform inv_sqrt --seeds 0,1

``--term listwise`` (corpus-only fits). Why: at the PCA start the listwise KL of a 16-dim prefix is
~25x that of a 128-dim one (SciFact, MiniLM: 1.01 / 0.49 / 0.19 / 0.042 / 0.0009 at 16 / 32 / 64 /
128 / 256), so the uniform mean over dims is spent on the small prefixes, and the corpus-only
adaptor ends slightly below PCA at 128-256 dims on some data (issue 17 target 2; XQuAD-R at 128).
Arms (per-dim weights of the KL, normalised to mean 1, so ``uniform`` is today's loss):

- ``uniform``: the library's loss;
- ``sqrt`` / ``linear``: weight proportional to sqrt(m) / m;
- ``hinge:W``: uniform, plus W * relu(KL_m(adapted) - KL_m(rotation only)) per dim, the rotation-only
  KL computed on the same batch from the rotated inputs (no gradient): a penalty for any dim where
  the residual MLP makes the prefix ranking worse than the rotation alone gives.

``--term rank`` (supervised fits on the fit queries' labels, ``--labels N`` for a subset). Why: with
all SciFact labels the supervised adaptor is 0.18 below the full dims at 16 and above them from 64
on (issue 17 target 3), so the small prefixes may deserve more of the ranking loss. Arms (weights
normalised to mean 1): ``uniform`` (the library's loss), ``inv_sqrt`` / ``inv_linear`` (weight
proportional to 1/sqrt(m) / 1/m; ``inv_sqrt`` is the library option ``rank_dim_weights="inv_sqrt"``),
``first:W`` (the smallest dim W, the others 1).

Scored on the dev queries of ``topic_holdout_dev.load_dev_data`` (XQuAD-R: questions of 7 held-out
train articles; SciFact: 30 % of the train queries; NFCorpus: dev). The test split is never read.
The other arms are patched in this script only.
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
from matryoshka_adaptor.eval.methods import FitData, make_method
from matryoshka_adaptor.eval.metrics import evaluate_run
from matryoshka_adaptor.eval.retrieval import retrieve
from matryoshka_adaptor.nn import losses, training

from dev_splits import add_dev_set_arguments
from topic_holdout_dev import DIMS, load_dev_data


def per_dim_kl(anchors, pool, target, dims, temperature, mask):
    """The library's listwise KL, one value per dim: shape (M,)."""
    return losses.listwise_distillation_loss(anchors, pool, target, dims, temperature=temperature, mask=mask,
                                             reduction="per_dim")


LISTWISE_ARMS, RANK_ARMS = ("uniform", "sqrt", "linear", "hinge"), ("uniform", "inv_sqrt", "inv_linear", "first")


def check_arm(term: str, arm: str) -> None:
    kind, _, arg = arm.partition(":")
    arms = LISTWISE_ARMS if term == "listwise" else RANK_ARMS
    needs_arg = kind in ("hinge", "first")
    try:
        weight_ok = float(arg) >= 0 if needs_arg else not arg
    except ValueError:
        weight_ok = False
    if kind not in arms or not weight_ok:
        raise SystemExit(f"unknown {term} arm {arm!r}: use one of {', '.join(arms)} ('hinge:W' / 'first:W' "
                         "take a weight)")


def listwise_term_for(arm: str):
    kind, _, arg = arm.partition(":")

    def term(b: training.UnsupervisedBatch) -> torch.Tensor:
        mask = training.listwise_pool_mask(b.anchor_ids, b.pool_rows, b.n_corpus_anchors,
                                           queries_as_candidates=b.config.queries_as_candidates)
        kl = per_dim_kl(b.anchors_adapted, b.adapted, b.target, b.dims, b.config.temperature, mask)
        m = torch.as_tensor(b.dims, dtype=kl.dtype)
        if kind == "uniform":
            return kl.mean()
        if kind in ("sqrt", "linear"):
            w = m.sqrt() if kind == "sqrt" else m
            return (kl * w / w.mean()).sum() / len(b.dims)
        z = b.rotated.detach()  # hinge
        with torch.no_grad():
            ref = per_dim_kl(z[: b.n], z, b.target, b.dims, b.config.temperature, mask)
        return kl.mean() + float(arg) * torch.relu(kl - ref).mean()

    return term


def rank_weights(arm: str, dims) -> np.ndarray:
    """Per-dim weights of the ranking loss for ``arm``, normalised to mean 1 (``inv_sqrt``: the library's
    ``rank_dim_weights="inv_sqrt"``)."""
    kind, _, arg = arm.partition(":")
    if kind == "inv_sqrt":
        return np.asarray(losses.inverse_sqrt_dim_weights(dims))
    m = np.asarray(dims, dtype=np.float64)
    w = {"uniform": np.ones_like(m), "inv_linear": 1 / m}.get(kind)
    if w is None:  # first:W
        w = np.ones_like(m)
        w[0] = float(arg)
    return w / w.mean()


def rank_term_for(arm: str):
    def term(b: training.SupervisedBatch) -> torch.Tensor:
        if arm == "uniform":
            return training._ranking_term(b)
        return losses.ranking_loss(b.queries, b.docs, b.grades, b.dims, scale=b.config.rank_scale,
                                   positive_mask=b.as_positive, dim_weights=rank_weights(arm, b.dims).tolist())

    return term


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dev_set_arguments(ap)
    ap.add_argument("--term", choices=("listwise", "rank"), default="listwise",
                    help="listwise: corpus-only fits (--labels unused); rank: supervised fits on the fit "
                    "queries' labels")
    ap.add_argument("--arms", nargs="+", default=None,
                    help="default: uniform sqrt hinge:10 (listwise), uniform inv_sqrt (rank)")
    ap.add_argument("--params", default="", help="extra MatryoshkaAdaptor keywords, e.g. \"steps=800\"")
    ap.add_argument("--out", default="results/dim_weighting_dev.jsonl")
    args = ap.parse_args()
    arms = args.arms or (["uniform", "sqrt", "hinge:10"] if args.term == "listwise" else ["uniform", "inv_sqrt"])
    for arm in arms:
        check_arm(args.term, arm)  # unknown arms fail before any fit
    C, cid, qvec, fit_qrels, dev = load_dev_data(args.dataset, Path(args.data_dir))
    dev_q = list(dev)
    Qdev = np.stack([qvec[q] for q in dev_q])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    original_terms = training.LOSS_TERMS
    patched, term_for = ("listwise", listwise_term_for) if args.term == "listwise" else ("rank", rank_term_for)

    def score(encode) -> list[float]:
        return [round(evaluate_run(dev, retrieve(encode(Qdev, m), encode(C, m), dev_q, cid))["ndcg@10"], 4)
                for m in DIMS]

    def emit(seed, setting, row, **extra):
        rec = dict(dataset=args.dataset, term=args.term, labels=args.labels or "all", seed=seed, setting=setting,
                   params=args.params, ndcg=dict(zip(DIMS, row)), **extra)
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{args.dataset} seed={seed} {args.term} {setting} {args.params}: {row} {extra or ''}", flush=True)

    emit(None, "pca", score(make_method("pca").fit(FitData(C, cid), DIMS, seed=0).encode))
    params = eval(f"dict({args.params})")  # a research script's own command line, as in ablation_dev.py
    for seed in (int(s) for s in args.seeds.split(",")):
        fit_q = list(fit_qrels) if args.labels is None else label_subset(list(fit_qrels), fit_qrels, args.labels, seed)
        for arm in arms:
            training.LOSS_TERMS = tuple(dataclasses.replace(t, fn=term_for(arm)) if t.name == patched else t
                                        for t in original_terms)
            t = time.perf_counter()
            est = MatryoshkaAdaptor(dims=DIMS, progress=False, seed=seed, **params)
            if args.term == "listwise":
                est.fit(C)
            else:
                est.fit(C, np.stack([qvec[q] for q in fit_q]), {q: fit_qrels[q] for q in fit_q}, corpus_ids=cid,
                        query_ids=fit_q)
            emit(seed, arm, score(lambda x, m: est.transform(x, m)), fit_s=round(time.perf_counter() - t),
                 stage2=est.fit_summary_.get("supervised"))
        training.LOSS_TERMS = original_terms


if __name__ == "__main__":
    main()
