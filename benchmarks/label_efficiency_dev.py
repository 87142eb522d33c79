"""Few-label ablation on a dev split: supervised adaptor on random label subsets vs PCA and the
unlabelled fit on the same queries, and the shrink from stage-2 back toward stage-1 weights.

SciFact: the 809 train queries split 70/30 with seed 123 (as ``ablation_dev.py``); subsets are
drawn from the 70 % and nDCG@10 is measured on the 30 %. NFCorpus: subsets of the train split,
measured on its dev split. The test split is never used.

For every supervised fit the weights at the end of stage 1 (theta1) and after stage 2 (theta2)
are kept; each row ``lambda=x`` is the single network theta1 + x (theta2 - theta1), so one fit
gives the whole shrink curve (x = 1 is the fit as it is). Usage:

    python benchmarks/label_efficiency_dev.py --data ../shared/data/scifact --labels 25,100 --seeds 0,1,2
    python benchmarks/label_efficiency_dev.py --data ../shared/data/nfcorpus --labels 25 "supervised_steps=300"

The positional argument is a Python keyword list passed to MatryoshkaAdaptor(...) for both the
supervised and the unlabelled fit.
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import numpy as np

from matryoshka_adaptor import MatryoshkaAdaptor
from matryoshka_adaptor.eval.datasets import load_beir
from matryoshka_adaptor.eval.label_curve import label_subset, parse_label_counts
from matryoshka_adaptor.eval.methods import FitData, make_method
from matryoshka_adaptor.eval.metrics import evaluate_run
from matryoshka_adaptor.eval.retrieval import retrieve
from matryoshka_adaptor.nn import training

from dev_splits import dev_split, minilm_vectors, use_net_weights

DIMS = [16, 32, 64, 128, 256, 384]
LAMBDAS = [0.0, 0.25, 0.5, 0.75, 1.0]


CHECKPOINTS = [100, 200, 400, 1000]


def capture_stage_states():
    """Patch the Trainer to keep, of the last supervised fit: the trainer, the stage-1 state, the
    stage-2 state it returns, and the raw weights at every validation (step = calls x eval_every)."""
    box = {}
    original = training.Trainer.fit_supervised
    original_val = training.Trainer.query_ndcg

    def wrapped(self):
        box["stage1"] = copy.deepcopy(self.net.state_dict())
        box["checkpoints"] = []
        out = original(self)
        box["stage2"] = copy.deepcopy(self.net.state_dict())
        box["trainer"], box["state"] = self, out
        return out

    def val(self, *a, **k):
        box["checkpoints"].append(copy.deepcopy(self.net.state_dict()))
        return original_val(self, *a, **k)

    training.Trainer.fit_supervised = wrapped
    training.Trainer.query_ndcg = val
    return box


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("params", nargs="?", default="")
    ap.add_argument("--data", default=os.environ.get("MA_DATA_DIR", "../shared/data") + "/scifact")
    ap.add_argument("--labels", default="25,100")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--no-unlabelled", action="store_true", help="skip the unlabelled fits (already measured)")
    args = ap.parse_args()
    params = eval(f"dict({args.params})")  # a command-line research tool: the user types the kwargs
    seeds = [int(s) for s in args.seeds.split(",")]

    ds = load_beir(args.data)
    pre = minilm_vectors(args.data)
    C, Q = pre.corpus, pre.queries
    cid, qpos = pre.corpus_ids, {q: i for i, q in enumerate(pre.query_ids)}
    train = ds.qrels["train"]
    fit_q, _, dev_q, dev_qrels = dev_split(args.data, ds, pre.query_ids)
    Qdev = Q[[qpos[q] for q in dev_q]]

    def scores(encode):
        return [evaluate_run(dev_qrels, retrieve(encode(Qdev, m), encode(C, m), dev_q, cid))["ndcg@10"] for m in DIMS]

    rows: dict[str, list] = {}

    def add(label, row):
        rows.setdefault(label, []).append(row)

    def table():

        print(f"\nparams: {args.params or 'default'}; seeds {args.seeds}; dev nDCG@10 (mean over seeds)")
        print("| labels | setting (seeds done) | " + " | ".join(map(str, DIMS)) + " | fit s |")
        print("| --- | --- | " + " | ".join("---" for _ in DIMS) + " | --- |")
        print("| - | pca | " + " | ".join(f"{x:.3f}" for x in pca_row) + " | |")
        for label, rs in rows.items():
            mean = np.mean(rs, axis=0)
            print(f"| {label} ({len(rs)}) | " + " | ".join(f"{x:.3f}" for x in mean[:-1]) + f" | {mean[-1]:.0f} |",
                  flush=True)

    pca = make_method("pca").fit(FitData(C, cid), tuple(DIMS), seed=0)
    pca_row = scores(pca.encode)
    box = capture_stage_states()
    for n in parse_label_counts(args.labels):
        for seed in seeds:
            sub = label_subset(fit_q, train, n, seed)
            Qs = Q[[qpos[q] for q in sub]]
            if not args.no_unlabelled:
                t0 = time.perf_counter()
                un = MatryoshkaAdaptor(dims=DIMS, progress=False, **{"seed": seed, **params}).fit(C, Qs)
                add(f"{n} | unlabelled", scores(lambda x, m: un.transform(x, m)) + [time.perf_counter() - t0])
            t0 = time.perf_counter()
            est = MatryoshkaAdaptor(dims=DIMS, progress=False, **{"seed": seed, **params})
            est.fit(C, Qs, {q: train[q] for q in sub}, corpus_ids=cid, query_ids=sub)
            secs = time.perf_counter() - t0
            st = box["state"]
            print(f"  n={n} seed={seed}: fit {secs:.0f} s, stage-2 steps {st.steps_run}, best {st.best_step}, "
                  f"val {st.best_score:.3f}, summary {est.fit_summary_.get('supervised')}", flush=True)
            net = box["trainer"].net
            s1, s2 = box["stage1"], box["stage2"]
            every = est.settings_.eval_every
            for step in CHECKPOINTS:  # checkpoints[0] is the start (step 0)
                if step // every < len(box["checkpoints"]):
                    use_net_weights(est, net, box["checkpoints"][step // every])
                    add(f"{n} | supervised, raw weights at step {step}", scores(lambda x, m: est.transform(x, m)) + [secs])
            for lam in LAMBDAS:
                use_net_weights(est, net, {k: (s1[k] + lam * (s2[k] - s1[k])) if s1[k].is_floating_point() else s2[k]
                                           for k in s1})
                add(f"{n} | supervised lambda={lam}", scores(lambda x, m: est.transform(x, m)) + [secs])
            net.load_state_dict(s2)
            table()



if __name__ == "__main__":
    main()
