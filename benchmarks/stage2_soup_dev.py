"""Stage 2 run K times from the same stage-1 weights, and the average of their weights (dev splits only).

    python benchmarks/stage2_soup_dev.py --data $MA_DATA_DIR/scifact --seeds 0,1 --k 3 --out results/stage2_soup.jsonl
    python benchmarks/stage2_soup_dev.py --data $MA_DATA_DIR/scifact --embeddings <e5 vectors> --seeds 0,1 --out ...

Why: the supervised fit's small prefixes move by up to 0.05 between seeds (issue 17), and a weight
average of fine-tuned runs from one start ("model soup", Wortsman et al. 2022) is the usual way to
keep what the runs share and average away what they do not, at no inference cost. Run 0 is the plain
fit (the fit's own random streams); runs 1..K-1 draw stage 2's batches from streams of their own.
Every run keeps its early stopping and shrink. Scored: each run, the soup of all K, and the soup of
runs 0 and 1, on the dev split of ``ablation_dev.py --supervised`` (SciFact: 30 % of the train
queries; other sets: likewise from their train queries); the test split is never read.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from matryoshka_adaptor import MatryoshkaAdaptor
from matryoshka_adaptor.embed.sources import load_precomputed
from matryoshka_adaptor.eval.datasets import load_beir
from matryoshka_adaptor.eval.metrics import evaluate_run
from matryoshka_adaptor.eval.retrieval import retrieve
from matryoshka_adaptor.nn import training

from dev_splits import dev_split, minilm_vectors, use_net_weights

DIMS = [16, 32, 64, 128, 256, 384]


def mean_weights(states: list[dict]) -> dict:
    return {k: sum(s[k] for s in states) / len(states) if states[0][k].is_floating_point() else states[0][k]
            for k in states[0]}


def run_stage_two_k_times(k: int) -> dict:
    """Patch ``Trainer.fit_supervised`` to run K times from one start; the fit keeps run 0."""
    box, fit_supervised = {}, training.Trainer.fit_supervised

    def wrapped(self):
        start, seed, states, runs = copy.deepcopy(self.net.state_dict()), self.config.seed, [], []
        for i in range(k):
            self.net.load_state_dict(start)
            if i:  # the held-out split is drawn once per fit, so every run sees the same one
                self.rng = np.random.default_rng([seed, i])
                self.gen = torch.Generator(device="cpu").manual_seed(1000 * seed + i)
            states.append(fit_supervised(self))
            runs.append(copy.deepcopy(self.net.state_dict()))
        box.update(trainer=self, runs=runs, shrinks=[getattr(s, "shrink", None) for s in states],
                   steps=[s.best_step for s in states])
        self.net.load_state_dict(runs[0])
        return states[0]

    training.Trainer.fit_supervised = wrapped
    return box


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("MA_DATA_DIR", "../shared/data") + "/scifact")
    ap.add_argument("--embeddings", default=None, help="another model's vectors (corpus.npy, queries.npy, ids.json)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--k", type=int, default=3, help="stage-2 runs per fit (>= 2)")
    ap.add_argument("--params", default="", help="extra MatryoshkaAdaptor keywords")
    ap.add_argument("--out", default="results/stage2_soup.jsonl")
    args = ap.parse_args()
    if args.k < 2:
        raise SystemExit("--k must be at least 2")
    ds = load_beir(args.data)
    pre = load_precomputed(args.embeddings) if args.embeddings else minilm_vectors(args.data)
    qpos, train = {q: i for i, q in enumerate(pre.query_ids)}, ds.qrels["train"]
    fit_q, _, dev_q, dev_qrels = dev_split(args.data, ds, pre.query_ids, use_dev_qrels=False)
    Qdev, Qfit = pre.queries[[qpos[q] for q in dev_q]], pre.queries[[qpos[q] for q in fit_q]]
    box = run_stage_two_k_times(args.k)
    params = eval(f"dict({args.params})")  # a research script's own command line, as in ablation_dev.py
    for seed in (int(s) for s in args.seeds.split(",")):
        t = time.perf_counter()
        est = MatryoshkaAdaptor(dims=DIMS, progress=False, seed=seed, **params)
        est.fit(pre.corpus, Qfit, {q: train[q] for q in fit_q}, corpus_ids=pre.corpus_ids, query_ids=fit_q)
        rec = dict(data=args.data, embeddings=args.embeddings, seed=seed, k=args.k, params=args.params,
                   fit_s=round(time.perf_counter() - t), shrinks=box["shrinks"], steps=box["steps"], dev={})
        candidates = {f"run{i}": state for i, state in enumerate(box["runs"])}
        candidates.update(soup=mean_weights(box["runs"]), soup_of_two=mean_weights(box["runs"][:2]))
        for name, state in candidates.items():
            use_net_weights(est, box["trainer"].net, state)
            rec["dev"][name] = [evaluate_run(dev_qrels, retrieve(est.transform(Qdev, m), est.transform(pre.corpus, m),
                                                                 dev_q, pre.corpus_ids))["ndcg@10"] for m in DIMS]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with Path(args.out).open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"seed {seed}, fit {rec['fit_s']} s, shrinks {rec['shrinks']}, steps {rec['steps']}: "
              + "; ".join(f"{k} " + " ".join(f"{x:.4f}" for x in v) for k, v in rec["dev"].items()), flush=True)


if __name__ == "__main__":
    main()
