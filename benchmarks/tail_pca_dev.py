"""Corpus-only fits with their trailing coordinates re-ordered by PCA after the fit (dev splits only).

    python benchmarks/tail_pca_dev.py --dataset scifact --seeds 0,1 --ks 0,32,64,96
    python benchmarks/tail_pca_dev.py --dataset xquad-r/th --seeds 0,1 --params "rotation_dims=384, residual_dims=384"

Why: the corpus-only adaptor beats PCA at the small prefixes and falls slightly below it at 128
(issue 17 target 2, issue 18). For k in ``--ks``, after the fit, the adapted corpus vectors'
coordinates k..d are rotated onto their own (uncentred) principal axes: the first k coordinates and
every full-dimension cosine are unchanged, and each prefix longer than k holds the learned k
coordinates plus the most energetic directions of what is left. k = 0 is the fit as it is.
Scored on the dev queries of ``topic_holdout_dev.load_dev_data``; the test split is never read.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from matryoshka_adaptor import MatryoshkaAdaptor
from matryoshka_adaptor.eval.methods import FitData, make_method
from matryoshka_adaptor.eval.metrics import evaluate_run
from matryoshka_adaptor.eval.retrieval import retrieve
from matryoshka_adaptor.pca import principal_axes
from matryoshka_adaptor.validation import l2_normalize

from dev_splits import add_dev_set_arguments
from topic_holdout_dev import DIMS, load_dev_data


def tail_rotation(adapted_corpus: np.ndarray, k: int) -> np.ndarray:
    """(d, d) orthogonal: identity on the first k coordinates, the tail's principal axes after them."""
    d = adapted_corpus.shape[1]
    b = np.eye(d)
    if 0 < k < d:
        axes = principal_axes(adapted_corpus[:, k:])[1]
        if axes.shape[0] < d - k:
            raise SystemExit("fewer corpus rows than tail dims")
        b[k:, k:] = axes.T
    return b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dev_set_arguments(ap)
    ap.add_argument("--ks", default="0,32,64,96")
    ap.add_argument("--params", default="", help="extra MatryoshkaAdaptor keywords")
    ap.add_argument("--out", default="results/tail_pca_dev.jsonl")
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    C, cid, qvec, _, dev = load_dev_data(args.dataset, Path(args.data_dir))
    dev_q = list(dev)
    Qdev = np.stack([qvec[q] for q in dev_q])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def emit(seed, setting, row, **extra):
        rec = dict(dataset=args.dataset, seed=seed, setting=setting, params=args.params,
                   ndcg=dict(zip(DIMS, row)), **extra)
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{args.dataset} seed={seed} {setting} {args.params}: {row} {extra or ''}", flush=True)

    def score(q_full, c_full):
        return [round(evaluate_run(dev, retrieve(l2_normalize(q_full[:, :m]), l2_normalize(c_full[:, :m]), dev_q, cid))["ndcg@10"], 4)
                for m in DIMS]

    pca = make_method("pca").fit(FitData(C, cid), DIMS, seed=0)
    emit(None, "pca", score(pca.encode(Qdev, DIMS[-1]), pca.encode(C, DIMS[-1])))
    params = eval(f"dict({args.params})")  # a research script's own command line, as in ablation_dev.py
    for seed in (int(s) for s in args.seeds.split(",")):
        t = time.perf_counter()
        est = MatryoshkaAdaptor(dims=DIMS, progress=False, seed=seed, **params).fit(C)
        fit_s = round(time.perf_counter() - t)
        cq, qq = est.transform(C, DIMS[-1]), est.transform(Qdev, DIMS[-1])
        for k in ks:
            b = tail_rotation(cq.astype(np.float64), k)
            emit(seed, f"tail_k={k}", score(qq @ b, cq @ b), fit_s=fit_s)


if __name__ == "__main__":
    main()
