"""XQuAD-R fits scored on a random dev split of the train questions and on the test split (a diagnosis).

    python benchmarks/heldout_topic_shift_dev.py --data-dir ../shared/data --lang el
    python benchmarks/heldout_topic_shift_dev.py --data-dir ../shared/data --lang el "supervised_steps=0"
    python benchmarks/heldout_topic_shift_dev.py --data-dir ../shared/data --lang el --unsupervised

XQuAD-R's train questions ask about the first 24 articles and its test questions about the other 24
(the corpus holds every sentence). The fit uses 70 % of the train questions (seed 123); nDCG@10 is
printed for the other 30 % (same articles as the fit: a random dev split) and for the test questions
(unseen articles). A large gap between the two says the supervised stage learned the labelled
articles rather than the task. The positional argument is a Python keyword list for MatryoshkaAdaptor.

``--unsupervised`` fits three unsupervised adaptors instead of the supervised one: corpus only, with
the fit questions as unlabelled anchors, and with the test questions added as unlabelled anchors too
(the serving queries known in advance), to tell a topic shift from query anchors that do not help at all.
It reads the test split for a diagnosis, never to choose a setting.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from matryoshka_adaptor import MatryoshkaAdaptor
from matryoshka_adaptor.eval.datasets import load_beir
from matryoshka_adaptor.eval.metrics import evaluate_run
from matryoshka_adaptor.eval.retrieval import retrieve

from dev_splits import shared_vectors

DIMS = (16, 32, 64, 128, 384)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("params", nargs="?", default="", help="keyword arguments for MatryoshkaAdaptor, e.g. \"seed=1\"")
    ap.add_argument("--data-dir", default=os.environ.get("MA_DATA_DIR", "../shared/data"))
    ap.add_argument("--lang", default="el")
    ap.add_argument("--unsupervised", action="store_true", help="the three unsupervised fits (see above)")
    args = ap.parse_args()
    params = eval(f"dict({args.params})")  # a benchmark script's own command line, as in ablation_dev.py
    folder = Path(args.data_dir) / "xquad-r" / args.lang
    ds = load_beir(folder)
    pre = shared_vectors(folder)
    corpus, queries, cid = pre.corpus, pre.queries, pre.corpus_ids
    qpos = {q: i for i, q in enumerate(pre.query_ids)}
    train, test = ds.qrels["train"], ds.qrels["test"]
    train_q = [q for q in pre.query_ids if q in train]
    perm = np.random.default_rng(123).permutation(len(train_q))
    cut = int(0.7 * len(train_q))
    fit_q, dev_q = [train_q[i] for i in perm[:cut]], [train_q[i] for i in perm[cut:]]
    test_q = [q for q in pre.query_ids if q in test]

    def vecs(qs):
        return queries[[qpos[q] for q in qs]]

    def score_rows(est, label: str) -> None:
        for name, qs, qrels in (("dev (train articles)", dev_q, {q: train[q] for q in dev_q}),
                                ("test (unseen articles)", test_q, test)):
            row = [round(evaluate_run(qrels, retrieve(est.transform(vecs(qs), m), est.transform(corpus, m), qs,
                                                      cid))["ndcg@10"], 4) for m in DIMS]
            print(args.lang, label, name, dict(zip(DIMS, row)), flush=True)

    if args.unsupervised:
        for label, anchors in (("corpus only", None), ("fit questions as anchors", vecs(fit_q)),
                               ("fit + test questions as anchors", vecs(fit_q + test_q))):
            est = MatryoshkaAdaptor(dims=DIMS, seed=0, progress=False, device="cpu", **params)
            score_rows(est.fit(corpus) if anchors is None else est.fit(corpus, anchors), label)
        return
    t = time.perf_counter()
    est = MatryoshkaAdaptor(seed=0, progress=False, device="cpu", **params)
    est.fit(corpus, vecs(fit_q), {q: train[q] for q in fit_q}, corpus_ids=cid, query_ids=fit_q)
    fit_s = time.perf_counter() - t
    score_rows(est, args.params or "default")
    print("fit seconds", round(fit_s), "stage 2", est.fit_summary_.get("supervised"))


if __name__ == "__main__":
    main()
