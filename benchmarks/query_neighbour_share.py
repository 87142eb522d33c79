"""How much of a query's neighbourhood is other queries: a symmetric model vs an asymmetric one.

    python benchmarks/query_neighbour_share.py --datasets scifact nfcorpus xquad-r/el xquad-r/th

For each train query, its 10 nearest neighbours by full-dim cosine among (the other train queries
and the corpus); prints the share of those neighbours that are queries, and the mean cosine of a
query with its 10 nearest queries and with its 10 nearest documents. When the share is high, the
listwise term of an unsupervised fit with query anchors spends a query anchor's target on other
queries (the option ``queries_as_candidates=False`` masks them; docs/ablations.md, session 7). The
mean cosine to *all* other queries against all documents tells whether that is because the queries
are about the same things (a symmetric model) or because every query looks like every other (an
asymmetric model's ``query: `` prefix).
Reads only the train queries; the test split is never used.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from matryoshka_adaptor.eval.datasets import load_beir
from matryoshka_adaptor.validation import l2_normalize

from dev_splits import shared_model, shared_vectors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus", "xquad-r/el", "xquad-r/th"])
    ap.add_argument("--data-dir", default=os.environ.get("MA_DATA_DIR", "../shared/data"))
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    print("| dataset | model | train queries | share of a query's top-10 that are queries "
          "| mean cosine to top-10 queries | to top-10 documents | to all queries | to all documents |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.datasets:
        folder = Path(args.data_dir) / name
        model, pre, ds = shared_model(folder), shared_vectors(folder), load_beir(folder)
        train = ds.qrels["train"]
        Q = l2_normalize(pre.queries[[i for i, q in enumerate(pre.query_ids) if q in train]])
        C = l2_normalize(pre.corpus)
        shares, to_q, to_c, all_q, all_c = [], [], [], [], []
        for s in range(0, len(Q), 512):
            qq = Q[s : s + 512] @ Q.T
            all_q.append((qq.sum(1) - 1.0) / (len(Q) - 1))
            qq[np.arange(len(qq)), np.arange(s, s + len(qq))] = -np.inf  # not itself
            qc = Q[s : s + 512] @ C.T
            all_c.append(qc.mean(1))
            top = np.argsort(-np.concatenate([qq, qc], axis=1), axis=1)[:, : args.k]
            shares.append((top < len(Q)).mean(1))
            to_q.append(-np.sort(-qq, axis=1)[:, : args.k].mean(1))
            to_c.append(-np.sort(-qc, axis=1)[:, : args.k].mean(1))
        print(f"| {name} | {model} | {len(Q)} | {np.concatenate(shares).mean():.2f} "
              f"| {np.concatenate(to_q).mean():.3f} | {np.concatenate(to_c).mean():.3f} "
              f"| {np.concatenate(all_q).mean():.3f} | {np.concatenate(all_c).mean():.3f} |", flush=True)


if __name__ == "__main__":
    main()
