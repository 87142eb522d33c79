"""Ablations on a SciFact *dev* split carved from the train queries (the test split is never used).

The 809 SciFact train queries are split 70/30 with a fixed seed (123): methods that may use
queries (unlabeled or labeled) train on the 70 %, and nDCG@10 is measured on the held-out 30 %
(243 queries). Usage:

    python benchmarks/ablation_dev.py --data ../shared/data/scifact "recipe='paper'"
    python benchmarks/ablation_dev.py --data ../shared/data/scifact "topk_weight=0, alpha=0, beta=1, steps=300" --queries
    python benchmarks/ablation_dev.py --data ../shared/data/scifact "" --supervised --seeds 0,1
    python benchmarks/ablation_dev.py --data ../shared/data/scifact --baselines

The positional argument is a Python keyword list passed to MatryoshkaAdaptor(...).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from matryoshka_adaptor import MatryoshkaAdaptor
from matryoshka_adaptor.eval.datasets import load_beir
from matryoshka_adaptor.eval.methods import FitData, make_method
from matryoshka_adaptor.eval.metrics import evaluate_run
from matryoshka_adaptor.eval.retrieval import retrieve

DIMS = [16, 32, 64, 128, 256, 384]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("params", nargs="?", default="", help="keyword arguments for MatryoshkaAdaptor, e.g. \"steps=300\"")
    ap.add_argument("--data", default=os.environ.get("MA_DATA_DIR", "../shared/data") + "/scifact")
    ap.add_argument("--queries", action="store_true", help="unsupervised, with the 70 %% train queries unlabeled")
    ap.add_argument("--supervised", action="store_true", help="supervised on the 70 %% train queries' qrels")
    ap.add_argument("--baselines", action="store_true", help="print truncate and PCA only")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds; the row is their mean (single-seed rows move by ~0.01)")
    args = ap.parse_args()

    ds = load_beir(args.data)
    emb = Path(args.data) / "embeddings" / "all-MiniLM-L6-v2"
    C, Q = np.load(emb / "corpus.npy"), np.load(emb / "queries.npy")
    ids = json.loads((emb / "ids.json").read_text())
    cid, qpos = ids["corpus_ids"], {q: i for i, q in enumerate(ids["query_ids"])}
    train = ds.qrels["train"]
    train_q = [q for q in ids["query_ids"] if q in train]
    perm = np.random.default_rng(123).permutation(len(train_q))
    cut = int(0.7 * len(train_q))
    fit_q = [train_q[i] for i in sorted(perm[:cut])]
    dev_q = [train_q[i] for i in sorted(perm[cut:])]
    dev_qrels = {q: train[q] for q in dev_q}
    Qdev, Qfit = Q[[qpos[q] for q in dev_q]], Q[[qpos[q] for q in fit_q]]

    def scores(encode):
        return [evaluate_run(dev_qrels, retrieve(encode(Qdev, m), encode(C, m), dev_q, cid))["ndcg@10"] for m in DIMS]

    def report(label, row):
        print(f"| {label} | " + " | ".join(f"{x:.3f}" for x in row) + " |", flush=True)

    print("| setting | " + " | ".join(map(str, DIMS)) + " |")
    if args.baselines:
        # The benchmark's own baseline classes, fitted on the corpus only.
        for name, label in (("truncate", "truncate"), ("pca", "pca (uncentred)")):
            method = make_method(name).fit(FitData(C, cid), tuple(DIMS), seed=0)
            report(label, scores(method.encode))
        return
    params = eval(f"dict({args.params})")  # a command-line research tool: the user types the kwargs
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, seconds = [], []
    for seed in seeds:
        est = MatryoshkaAdaptor(dims=DIMS, progress=False, **{"seed": seed, **params})
        t0 = time.perf_counter()
        if args.supervised:
            est.fit(C, Qfit, {q: train[q] for q in fit_q}, corpus_ids=cid, query_ids=fit_q)
        elif args.queries:
            est.fit(C, Qfit)
        else:
            est.fit(C)
        seconds.append(time.perf_counter() - t0)
        rows.append(scores(lambda x, m: est.transform(x, m)))
    label = f"{args.params or 'default'}{' +queries' if args.queries else ''}{' supervised' if args.supervised else ''}"
    report(f"{label}, seeds {args.seeds} (fit {np.mean(seconds):.0f} s)", np.mean(rows, axis=0))


if __name__ == "__main__":
    main()
