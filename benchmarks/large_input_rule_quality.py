"""Quality check of the large-input architecture rule (config.default_architecture) applied to 384-dim vectors.

    python benchmarks/large_input_rule_quality.py --data-dir ../shared/data --out results/rule_quality

The rule (rotation and residual MLP learned only in the leading r PCA coordinates, r the largest
trained dim up to d/4, hidden width r) switches on above 1,024 dims, where no BEIR embeddings are
at hand here; so it is forced on the 384-dim all-MiniLM-L6-v2 vectors (r = 64) and compared with
the default, corpus-only unsupervised fits, seed 0, nDCG@10 on each test split (a check that the
rule does not lose quality, not a choice: nothing is tuned on it).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from matryoshka_adaptor import MatryoshkaAdaptor
from matryoshka_adaptor.eval.datasets import load_beir
from matryoshka_adaptor.eval.metrics import evaluate_run
from matryoshka_adaptor.eval.retrieval import retrieve

from dev_splits import minilm_vectors

DIMS = [16, 32, 64, 128]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("MA_DATA_DIR", "../shared/data"))
    ap.add_argument("--datasets", default="scifact,nfcorpus")
    ap.add_argument("--arms", default="default,rule", help="comma list of default, rule, rule-v1, rule-wide")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on the busy shared 2-core machine a 2-thread LU, the learned rotation's "
                         "Cayley solve, stalled for 100+ ms a step; quality does not depend on it)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    # rule: what default_architecture gives a 3,072-dim input, scaled to 384 dims (r = the largest
    # trained dim <= d/4 = 64: rotation and residual MLP in the leading 64 PCA coordinates, hidden 64);
    # rule-v1: the earlier rule (hidden d/4 = 96 over all coordinates, rotation in the leading 64).
    arms = {"default": {}, "rule": dict(hidden_dim=64, rotation_dims=64, residual_dims=64),
            "rule-v1": dict(hidden_dim=96, rotation_dims=64),
            "rule-wide": dict(hidden_dim=128, rotation_dims=64, residual_dims=64)}  # hidden 2r
    arms = {k: v for k, v in arms.items() if k in args.arms.split(",")}
    result = {}
    for name in args.datasets.split(","):
        folder = Path(args.data_dir) / name
        ds = load_beir(folder)
        pre = minilm_vectors(folder)
        corpus, queries = pre.corpus, pre.queries
        qpos = {q: i for i, q in enumerate(pre.query_ids)}
        test = ds.qrels["test"]
        test_q = [q for q in pre.query_ids if q in test]
        q_test = queries[[qpos[q] for q in test_q]]
        for arm, params in arms.items():
            t = time.perf_counter()
            est = MatryoshkaAdaptor(seed=0, progress=False, device="cpu", **params).fit(corpus)
            wall = time.perf_counter() - t
            scores = [round(evaluate_run(test, retrieve(est.transform(q_test, m), est.transform(corpus, m), test_q,
                                                        pre.corpus_ids))["ndcg@10"], 4) for m in DIMS]
            result[f"{name} / {arm}"] = {"ndcg@10": scores, "fit_s": round(wall, 1)}
            print(name, arm, scores, f"{wall:.1f} s", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"rule_quality-{args.datasets}-{args.arms}.json").write_text(json.dumps({"dims": DIMS, "rows": result}, indent=2))


if __name__ == "__main__":
    main()
