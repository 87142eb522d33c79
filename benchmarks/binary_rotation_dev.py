"""Binary first stages with and without a transform before the sign bits, on a *dev* split.

Compares ``binary`` (signs of the prefix), ``binary-centered`` (signs after subtracting the corpus
mean) and ``binary-itq`` (centred, then an ITQ rotation fitted on the corpus prefix) for the
baselines (truncation, uncentred PCA, centred PCA: PCA + ITQ is the classic baseline) and the
adaptor, at 64/128/256/384 bits without rescoring and at 64/128 bits with the top 100 rescored by
the full float32 originals. nDCG@10 on:

* SciFact: the same 70/30 split of the train queries as ``ablation_dev.py`` (seed 123; dev = 243
  queries); the adaptor fits on the corpus (or, with ``--supervised``, on the 70 %'s qrels);
* NFCorpus: its own ``dev`` qrels (supervised: the ``train`` qrels).

The test split is never used. Usage:

    python benchmarks/binary_rotation_dev.py --data ../shared/data/scifact --seeds 0,1
    python benchmarks/binary_rotation_dev.py --data ../shared/data/nfcorpus --seeds 0
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from matryoshka_adaptor import MatryoshkaAdaptor
from matryoshka_adaptor.eval.datasets import load_beir
from matryoshka_adaptor.eval.methods import FitData, make_method
from matryoshka_adaptor.eval.metrics import evaluate_run
from matryoshka_adaptor.eval.retrieval import run_from_ranking
from matryoshka_adaptor.quantization import QuantizedVectors, funnel_search
from matryoshka_adaptor.validation import l2_normalize

from dev_splits import dev_split, minilm_vectors

PRECISIONS = ("binary", "binary-centered", "binary-itq")
COLUMNS = [(64, 0), (128, 0), (256, 0), (384, 0), (64, 100), (128, 100)]  # (bits, shortlist)
DIMS = (16, 32, 64, 128, 256, 384)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("MA_DATA_DIR", "../shared/data") + "/scifact")
    ap.add_argument("--seeds", default="0", help="adaptor seeds (and ITQ seeds); rows are their mean")
    ap.add_argument("--supervised", action="store_true", help="also a supervised adaptor (fit-split qrels)")
    ap.add_argument("--no-baselines", action="store_true")
    args = ap.parse_args()

    ds = load_beir(args.data)
    pre = minilm_vectors(args.data)
    C, Q = pre.corpus, pre.queries
    cid, qpos = pre.corpus_ids, {q: i for i, q in enumerate(pre.query_ids)}
    fit_q, fit_qrels, dev_q, dev_qrels = dev_split(args.data, ds, pre.query_ids)
    Qdev, Qfit = Q[[qpos[q] for q in dev_q]], Q[[qpos[q] for q in fit_q]]
    C_unit, Qdev_unit = l2_normalize(C), l2_normalize(Qdev)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{Path(args.data).name}: {len(C)} docs, {len(dev_q)} dev queries, {len(fit_q)} fit queries, seeds {seeds}")
    print("| method | first stage | " + " | ".join(f"{b} bits{f' + top-{s}' if s else ''}" for b, s in COLUMNS) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in COLUMNS) + " |")

    def row(encode, precision, seed):
        out = []
        for bits, shortlist in COLUMNS:
            first = QuantizedVectors.encode(encode(C, bits), precision, seed=seed)
            idx, _ = funnel_search(encode(Qdev, bits), first, 100, shortlist=shortlist, query_full=Qdev_unit,
                                   corpus_full=C_unit)
            out.append(evaluate_run(dev_qrels, run_from_ranking(idx, dev_q, cid))["ndcg@10"])
        return out

    def report(label, precision, rows):
        print(f"| {label} | {precision} | " + " | ".join(f"{x:.4f}" for x in np.mean(rows, axis=0)) + " |", flush=True)

    if not args.no_baselines:
        for name in ("truncate", "pca", "pca-centered"):
            method = make_method(name).fit(FitData(C, cid), DIMS, seed=0)
            for precision in PRECISIONS:
                report(name, precision, [row(method.encode, precision, s) for s in seeds])
    kinds = [("adaptor", False)] + ([("adaptor-supervised", True)] if args.supervised else [])
    for label, supervised in kinds:
        fitted = []
        for seed in seeds:
            est = MatryoshkaAdaptor(dims=DIMS, progress=False, seed=seed)
            t0 = time.perf_counter()
            est.fit(C, Qfit, fit_qrels, corpus_ids=cid, query_ids=fit_q) if supervised else est.fit(C)
            print(f"  ({label} seed {seed}: fit {time.perf_counter() - t0:.0f} s)", flush=True)
            fitted.append(est)
        for precision in PRECISIONS:
            report(label, precision, [row(lambda x, m, est=est: est.transform(x, m), precision, s)
                                      for s, est in zip(seeds, fitted)])


if __name__ == "__main__":
    main()
