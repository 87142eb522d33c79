"""How much of the quality lost by fitting on a corpus sample comes from mining neighbours inside the sample.

    python benchmarks/sample_mining.py --data ../shared/data/scifact --sample 500 --seeds 0 --out results/sample_mining

Three unsupervised (corpus-only) fits on SciFact all-MiniLM-L6-v2, nDCG@10 on the test split:
  sample       max_fit_vectors=500: 500 anchors, their neighbours mined inside the 500 (before this study);
  sample+corpus  the same 500 anchors, neighbours mined in the whole corpus (neighbors_from="corpus");
  full         every corpus row an anchor, neighbours from the whole corpus.
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
from matryoshka_adaptor.eval.metrics import evaluate_run
from matryoshka_adaptor.eval.retrieval import retrieve

from dev_splits import minilm_vectors

DIMS = [16, 32, 64, 128]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("MA_DATA_DIR", "../shared/data") + "/scifact")
    ap.add_argument("--sample", type=int, default=500)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on the busy shared 2-core machine a 2-thread LU, the learned rotation's "
                         "Cayley solve, stalled for 100+ ms a step; quality does not depend on it)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    ds = load_beir(args.data)
    pre = minilm_vectors(args.data)
    corpus, queries = pre.corpus, pre.queries
    qpos = {q: i for i, q in enumerate(pre.query_ids)}
    test = ds.qrels["test"]
    test_q = [q for q in pre.query_ids if q in test]
    q_test = queries[[qpos[q] for q in test_q]]
    arms = {"sample": dict(max_fit_vectors=args.sample, neighbors_from="sample"),
            "sample+corpus": dict(max_fit_vectors=args.sample, neighbors_from="corpus"),
            "full": dict()}
    out = {"data": args.data, "sample": args.sample, "dims": DIMS, "rows": {}}
    for name, params in arms.items():
        rows = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            t = time.perf_counter()
            est = MatryoshkaAdaptor(seed=seed, progress=False, device="cpu", **params).fit(corpus)
            wall = time.perf_counter() - t
            scores = [evaluate_run(test, retrieve(est.transform(q_test, m), est.transform(corpus, m), test_q,
                                                  pre.corpus_ids))["ndcg@10"] for m in DIMS]
            rows.append(scores)
            print(name, seed, [round(v, 4) for v in scores], f"fit {wall:.1f} s,",
                  est.fit_summary_["n_fit_vectors"], "training rows", flush=True)
        out["rows"][name] = np.mean(rows, axis=0).round(4).tolist()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "sample_mining.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out["rows"]))


if __name__ == "__main__":
    main()
