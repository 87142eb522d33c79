"""Ablations on a SciFact *dev* split carved from the train queries (the test split is never used).

The 809 SciFact train queries are split 70/30 with a fixed seed (123): methods that may use
queries (unlabeled or labeled) train on the 70 %, and nDCG@10 is measured on the held-out 30 %
(243 queries). Usage:

    python benchmarks/ablation_dev.py --data ../shared/data/scifact "recipe='paper'"
    python benchmarks/ablation_dev.py --data ../shared/data/scifact "topk_weight=0, alpha=0, beta=1, steps=300" --queries
    python benchmarks/ablation_dev.py --data ../shared/data/scifact "" --supervised --seeds 0,1
    python benchmarks/ablation_dev.py --data ../shared/data/scifact "" --supervised --seeds 0,1 --stage2-keeps-final
    python benchmarks/ablation_dev.py --data ../shared/data/scifact --baselines
    python benchmarks/ablation_dev.py --data ../shared/data/scifact "binary_weight=1" --quantize

``--quantize`` reports equal-bytes columns instead of float dims: binary prefixes of 64..384 bits
without rescoring and with the top 100 rescored by the full float32 originals, and int8 prefixes.

The positional argument is a Python keyword list passed to MatryoshkaAdaptor(...).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from matryoshka_adaptor import MatryoshkaAdaptor
from matryoshka_adaptor.embed.sources import load_precomputed
from matryoshka_adaptor.eval.datasets import load_beir
from matryoshka_adaptor.eval.methods import FitData, make_method
from matryoshka_adaptor.eval.metrics import evaluate_run
from matryoshka_adaptor.eval.retrieval import retrieve, run_from_ranking
from matryoshka_adaptor.nn import training
from matryoshka_adaptor.quantization import QuantizedVectors, bytes_per_vector, funnel_search
from matryoshka_adaptor.validation import l2_normalize

from dev_splits import dev_split, minilm_vectors

DIMS = [16, 32, 64, 128, 256, 384]
# (precision, prefix dims, shortlist rescored with float32 originals; 0 = none)
QUANTIZED = [("binary", 64, 0), ("binary", 128, 0), ("binary", 256, 0), ("binary", 384, 0), ("binary", 64, 100),
             ("binary", 128, 100), ("int8", 32, 0), ("int8", 64, 0), ("float32", 64, 0)]


def keep_final_weights_in_stage_two() -> None:
    """Patch the trainer so that stage 2 never stops early nor restores its best validated weights."""
    loop = training.Trainer._loop

    def without_early_stopping(self, steps, step_fn, val_fn, desc, *, early_stopping=True, before_step=None):
        if desc == "fit (supervised)":
            early_stopping = False
        return loop(self, steps, step_fn, val_fn, desc, early_stopping=early_stopping, before_step=before_step)

    training.Trainer._loop = without_early_stopping


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("params", nargs="?", default="", help="keyword arguments for MatryoshkaAdaptor, e.g. \"steps=300\"")
    ap.add_argument("--data", default=os.environ.get("MA_DATA_DIR", "../shared/data") + "/scifact")
    ap.add_argument("--embeddings", default=None,
                    help="precomputed vectors (corpus.npy, queries.npy, ids.json) of another model; default: the data "
                         "folder's all-MiniLM-L6-v2 vectors")
    ap.add_argument("--queries", action="store_true", help="unsupervised, with the 70 %% train queries unlabeled")
    ap.add_argument("--supervised", action="store_true", help="supervised on the 70 %% train queries' qrels")
    ap.add_argument("--baselines", action="store_true", help="print truncate and PCA only")
    ap.add_argument("--quantize", action="store_true", help="equal-bytes columns (binary/int8 first stages)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds; the row is their mean (single-seed rows move by ~0.01)")
    ap.add_argument("--stage2-keeps-final", action="store_true",
                    help="research switch: stage 2 runs its whole budget and keeps its last weights (no early stopping)")
    args = ap.parse_args()
    if args.stage2_keeps_final:
        keep_final_weights_in_stage_two()

    ds = load_beir(args.data)
    pre = load_precomputed(args.embeddings) if args.embeddings else minilm_vectors(args.data)
    C, Q = pre.corpus, pre.queries
    cid, qpos = pre.corpus_ids, {q: i for i, q in enumerate(pre.query_ids)}
    train = ds.qrels["train"]
    fit_q, _, dev_q, dev_qrels = dev_split(args.data, ds, pre.query_ids, use_dev_qrels=False)
    Qdev, Qfit = Q[[qpos[q] for q in dev_q]], Q[[qpos[q] for q in fit_q]]

    def scores(encode):
        if args.quantize:
            return quantized_scores(encode)
        return [evaluate_run(dev_qrels, retrieve(encode(Qdev, m), encode(C, m), dev_q, cid))["ndcg@10"] for m in DIMS]

    C_unit, Qdev_unit = l2_normalize(C), l2_normalize(Qdev)

    def quantized_scores(encode):
        out = []
        for precision, m, shortlist in QUANTIZED:
            first = QuantizedVectors.encode(encode(C, m), precision)
            idx, _ = funnel_search(encode(Qdev, m), first, 100, shortlist=shortlist, query_full=Qdev_unit,
                                   corpus_full=C_unit)
            out.append(evaluate_run(dev_qrels, run_from_ranking(idx, dev_q, cid))["ndcg@10"])
        return out

    def report(label, row):
        print(f"| {label} | " + " | ".join(f"{x:.3f}" for x in row) + " |", flush=True)

    if args.quantize:
        print("| setting | " + " | ".join(f"{p} {m}d = {bytes_per_vector(m, p)} B{f' + top-{s}' if s else ''}"
                                          for p, m, s in QUANTIZED) + " |")
    else:
        print("| setting | " + " | ".join(map(str, DIMS)) + " |")
    if args.baselines:
        # The benchmark's own baseline classes, fitted on the corpus only.
        for name, label in (("truncate", "truncate"), ("pca", "pca (uncentred)"), ("pca-centered", "pca (centred)")):
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
        stage2 = est.fit_summary_.get("supervised", {})
        if "gamma_choice" in stage2:  # gamma="validated": the seed's row and what it kept
            print(f"  seed {seed}: gamma {stage2['gamma_choice']}, shrink {stage2['shrink']}, row "
                  + " / ".join(f"{x:.4f}" for x in rows[-1]), flush=True)
    label = (f"{args.params or 'default'}{' +queries' if args.queries else ''}{' supervised' if args.supervised else ''}"
             f"{', stage 2 keeps its last weights' if args.stage2_keeps_final else ''}")
    report(f"{label}, seeds {args.seeds} (fit {np.mean(seconds):.0f} s)", np.mean(rows, axis=0))


if __name__ == "__main__":
    main()
