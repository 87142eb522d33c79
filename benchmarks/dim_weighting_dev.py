"""Corpus-only fits with the listwise term's Matryoshka dims weighted differently (dev splits only).

    python benchmarks/dim_weighting_dev.py --dataset xquad-r/el --arms uniform sqrt hinge:10
    python benchmarks/dim_weighting_dev.py --dataset nfcorpus --arms uniform sqrt --seeds 0,1

Why: at the PCA start the listwise KL of a 16-dim prefix is ~25x that of a 128-dim one (SciFact,
MiniLM: 1.01 / 0.49 / 0.19 / 0.042 / 0.0009 at 16 / 32 / 64 / 128 / 256), so the uniform mean over
dims is spent on the small prefixes, and the corpus-only adaptor ends slightly below PCA at 128-256
dims on some data (issue 17 target 2; XQuAD-R at 128). Arms (per-dim weights of the KL, normalised
to mean 1, so ``uniform`` is today's loss):

- ``uniform``: the library's loss;
- ``sqrt`` / ``linear``: weight proportional to sqrt(m) / m;
- ``hinge:W``: uniform, plus W * relu(KL_m(adapted) - KL_m(rotation only)) per dim, the rotation-only
  KL computed on the same batch from the rotated inputs (no gradient): a penalty for any dim where
  the residual MLP makes the prefix ranking worse than the rotation alone gives.

Scored on the dev queries of ``topic_holdout_dev.load_dev_data`` (XQuAD-R: questions of 7 held-out
train articles; SciFact: 30 % of the train queries; NFCorpus: dev). The test split is never read.
The patch lives in this script only; the library is unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from matryoshka_adaptor import MatryoshkaAdaptor
from matryoshka_adaptor.eval.methods import FitData, make_method
from matryoshka_adaptor.eval.metrics import evaluate_run
from matryoshka_adaptor.eval.retrieval import retrieve
from matryoshka_adaptor.nn import losses, training

from topic_holdout_dev import DIMS, load_dev_data


def per_dim_kl(anchors, pool, target, dims, temperature, mask):
    """The library's listwise KL, one value per dim: shape (M,)."""
    return losses.listwise_distillation_loss(anchors, pool, target, dims, temperature=temperature, mask=mask,
                                             reduction="per_dim")


def listwise_term_for(arm: str):
    kind, _, arg = arm.partition(":")

    def term(b: training.UnsupervisedBatch) -> torch.Tensor:
        mask = training.listwise_pool_mask(b.anchor_ids, b.pool_rows, b.n_corpus_anchors)
        kl = per_dim_kl(b.anchors_adapted, b.adapted, b.target, b.dims, b.config.temperature, mask)
        m = torch.as_tensor(b.dims, dtype=kl.dtype)
        if kind == "uniform":
            return kl.mean()
        if kind in ("sqrt", "linear"):
            w = m.sqrt() if kind == "sqrt" else m
            return (kl * w / w.mean()).sum() / len(b.dims)
        if kind == "hinge":
            z = b.rotated.detach()
            with torch.no_grad():
                ref = per_dim_kl(z[: b.n], z, b.target, b.dims, b.config.temperature, mask)
            return kl.mean() + float(arg) * torch.relu(kl - ref).mean()
        raise SystemExit(f"unknown arm {arm!r}: use uniform, sqrt, linear or hinge:W")

    return term


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="scifact, nfcorpus or xquad-r/<lang>")
    ap.add_argument("--data-dir", default=os.environ.get("MA_DATA_DIR", "../shared/data"))
    ap.add_argument("--arms", nargs="+", default=["uniform", "sqrt", "hinge:10"])
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--params", default="", help="extra MatryoshkaAdaptor keywords, e.g. \"steps=800\"")
    ap.add_argument("--out", default="results/dim_weighting_dev.jsonl")
    args = ap.parse_args()
    for arm in args.arms:
        listwise_term_for(arm)  # unknown arms fail before any fit
    C, cid, qvec, _, dev = load_dev_data(args.dataset, Path(args.data_dir))
    dev_q = list(dev)
    Qdev = np.stack([qvec[q] for q in dev_q])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    original_terms = training.LOSS_TERMS

    def score(encode) -> list[float]:
        return [round(evaluate_run(dev, retrieve(encode(Qdev, m), encode(C, m), dev_q, cid))["ndcg@10"], 4)
                for m in DIMS]

    def emit(seed, setting, row, **extra):
        rec = dict(dataset=args.dataset, seed=seed, setting=setting, params=args.params, ndcg=dict(zip(DIMS, row)), **extra)
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{args.dataset} seed={seed} {setting} {args.params}: {row} {extra or ''}", flush=True)

    emit(None, "pca", score(make_method("pca").fit(FitData(C, cid), DIMS, seed=0).encode))
    params = eval(f"dict({args.params})")  # a research script's own command line, as in ablation_dev.py
    for seed in (int(s) for s in args.seeds.split(",")):
        for arm in args.arms:
            training.LOSS_TERMS = tuple(dataclasses.replace(t, fn=listwise_term_for(arm)) if t.name == "listwise" else t
                                        for t in original_terms)
            t = time.perf_counter()
            est = MatryoshkaAdaptor(dims=DIMS, progress=False, seed=seed, **params).fit(C)
            emit(seed, arm, score(lambda x, m: est.transform(x, m)), fit_s=round(time.perf_counter() - t))
        training.LOSS_TERMS = original_terms


if __name__ == "__main__":
    main()
