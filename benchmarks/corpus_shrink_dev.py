"""Corpus-only fits moved back toward their PCA start after training (dev splits only).

    python benchmarks/corpus_shrink_dev.py --dataset scifact --seeds 0,1 --out results/corpus_shrink.jsonl
    python benchmarks/corpus_shrink_dev.py --dataset nfcorpus --embeddings <e5 vectors> --seeds 0,1 --out ...
    python benchmarks/corpus_shrink_dev.py --summary results/corpus_shrink.jsonl

Why: the corpus-only adaptor is far above PCA at the small prefixes and level with it, or slightly
below, from 128 dims on (issue 17 target 2, issue 18). A corpus-only fit starts at the PCA rotation
with a zero residual, so its weights moved back by a shrink lam (``nn.training.interpolate_weights``,
the supervised shrink's interpolation: 0 = PCA exactly, 1 = the fit) trace a path between the two.
Does some lam keep most of the small prefixes' gain and give the long ones back what PCA had? Each
fit is scored at every lam of ``--shrinks`` on the dev queries of ``topic_holdout_dev.load_dev_data``;
the test split is never read. ``--summary`` prints, per lam, the mean and worst difference from the
fit as it is over the sets in the file (seeds averaged per set) and how many sets are below PCA.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from matryoshka_adaptor import MatryoshkaAdaptor
from matryoshka_adaptor.eval.metrics import evaluate_run
from matryoshka_adaptor.eval.retrieval import retrieve
from matryoshka_adaptor.nn import training

from dev_splits import add_dev_set_arguments, use_net_weights
from topic_holdout_dev import DIMS, load_dev_data


def capture_corpus_fit() -> dict:
    """Keep the trainer of the next unsupervised fit and its weights before and after training."""
    box, fit_unsupervised = {}, training.Trainer.fit_unsupervised

    def wrapped(self, **kwargs):
        box["start"], box["trainer"] = copy.deepcopy(self.net.state_dict()), self
        state = fit_unsupervised(self, **kwargs)
        box["end"] = copy.deepcopy(self.net.state_dict())
        return state

    training.Trainer.fit_unsupervised = wrapped
    return box


def record(args) -> None:
    C, cid, qvec, _, dev = load_dev_data(args.dataset, Path(args.data_dir),
                                         Path(args.embeddings) if args.embeddings else None)
    dev_q = list(dev)
    Qdev = np.stack([qvec[q] for q in dev_q])
    box = capture_corpus_fit()
    params = eval(f"dict({args.params})")  # a research script's own command line, as in ablation_dev.py
    for seed in (int(s) for s in args.seeds.split(",")):
        t = time.perf_counter()
        est = MatryoshkaAdaptor(dims=DIMS, progress=False, seed=seed, **params).fit(C, corpus_ids=cid)
        rec = dict(dataset=args.dataset, embeddings=args.embeddings, seed=seed, params=args.params,
                   fit_s=round(time.perf_counter() - t), dev={})
        trainer = box["trainer"]
        for lam in args.shrinks.split(","):
            use_net_weights(est, trainer.net, training.interpolate_weights(box["start"], box["end"], float(lam)))
            rec["dev"][lam] = [evaluate_run(dev, retrieve(est.transform(Qdev, m), est.transform(C, m), dev_q, cid))
                               ["ndcg@10"] for m in DIMS]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with Path(args.out).open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{args.dataset} seed={seed} fit {rec['fit_s']} s: "
              + "; ".join(f"lam {k} " + " ".join(f"{x:.4f}" for x in v) for k, v in rec["dev"].items()), flush=True)


def summary(path: str) -> None:
    records, sets = [json.loads(line) for line in Path(path).read_text().splitlines()], defaultdict(list)
    for rec in records:
        sets[(rec["dataset"], rec["embeddings"])].append(np.asarray(list(rec["dev"].values())))
    lams = list(records[0]["dev"])
    if float(lams[0]) != 0.0 or float(lams[-1]) != 1.0:
        raise SystemExit("--summary needs records made with a grid from 0 (PCA) to 1 (the fit)")
    rows = np.stack([np.mean(v, axis=0) for v in sets.values()])  # (sets, lams, dims), seeds averaged
    print(f"{len(sets)} sets; dims {DIMS}")
    for i, lam in enumerate(lams):
        diff = rows[:, i] - rows[:, -1]
        below = (rows[:, i] < rows[:, 0]).sum(axis=0)
        print(f"lam {lam}: - fit, mean " + " ".join(f"{x:+.4f}" for x in diff.mean(axis=0))
              + " | worst " + " ".join(f"{x:+.4f}" for x in diff.min(axis=0))
              + " | sets below PCA " + " ".join(str(int(b)) for b in below))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--summary", metavar="JSONL", help="summarise records instead of fitting")
    args, rest = ap.parse_known_args()
    if args.summary:
        return summary(args.summary)
    add_dev_set_arguments(ap)
    ap.add_argument("--embeddings", default=None, help="another model's vectors (corpus.npy, queries.npy, ids.json)")
    ap.add_argument("--shrinks", default="0,0.25,0.5,0.75,0.9,1", help="lam values, 0 = PCA, 1 = the fit")
    ap.add_argument("--params", default="", help="extra MatryoshkaAdaptor keywords")
    ap.add_argument("--out", default="results/corpus_shrink.jsonl")
    args = ap.parse_args(rest)
    if args.labels is not None:
        raise SystemExit("--labels: a corpus-only fit uses no labelled queries; drop the option")
    record(args)


if __name__ == "__main__":
    main()
