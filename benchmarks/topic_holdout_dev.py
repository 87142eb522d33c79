"""Supervised fits on dev splits that hold out topics (XQuAD-R articles) or not (SciFact, NFCorpus).

    python benchmarks/topic_holdout_dev.py --dataset xquad-r/el --seeds 0 --out results/topic_dev.jsonl
    python benchmarks/topic_holdout_dev.py --dataset scifact --labels 25 --seeds 0,1

Dev splits (the test split is never read):
- ``xquad-r/<lang>``: the train questions ask about articles 0-23; 7 of them (seed 123) are the dev
  articles and the fit sees only the questions of the other 17 (the test split's situation: unseen
  articles).
- ``scifact``: the 809 train queries split 70/30 with seed 123 (as ``ablation_dev.py``).
- ``nfcorpus``: fit on the train split, score on the dev split.
- ``xquad-r/pool``: as a language, with the pool's questions and its languages' stacked vectors.
``--labels N`` fits on a random N of the fit queries (``eval.label_curve.label_subset``, the seed's).

Rows per seed: PCA, the corpus-only adaptor, the adaptor with the fit queries unlabelled, and one
supervised fit per ``--arms`` entry (a Python keyword list for MatryoshkaAdaptor; "" is the
default). A supervised fit whose shrink ran (``supervised_shrink="validated"``, or ``"auto"``, the default)
also prints, from the same fit, its weights before the shrink (``lambda=1``), half way (``lambda=0.5``)
and its stage-1 weights (``lambda=0``). Each
row is appended to ``--out`` as one JSON line, so runs can be merged into tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np

from matryoshka_adaptor import MatryoshkaAdaptor
from matryoshka_adaptor.embed.sources import Precomputed, load_precomputed
from matryoshka_adaptor.eval.dataset_vectors import find_vectors, vectors_source
from matryoshka_adaptor.eval.datasets import load_beir
from matryoshka_adaptor.eval.label_curve import label_subset
from matryoshka_adaptor.eval.methods import FitData, make_method
from matryoshka_adaptor.eval.metrics import evaluate_run
from matryoshka_adaptor.eval.retrieval import retrieve
from matryoshka_adaptor.nn import training

from dev_splits import (add_dev_set_arguments, dev_split, is_xquad, shared_model, shared_vectors, use_net_weights,
                        xquad_article)

DIMS = (16, 32, 64, 128, 256, 384)
DEFAULT_ARMS = ("", 'use_queries="validated", supervised_shrink="validated"')


def load_dev_data(name: str, data_dir: Path, embeddings: Path | None = None):
    """(corpus vectors, corpus ids, query vectors by id, fit qrels, dev qrels) for one dataset.

    The vectors: ``embeddings`` (a folder of corpus.npy, queries.npy, ids.json) if given, else the
    set's precomputed ones, or, for XQuAD-R's ``pool`` (which has none of its own), its languages'
    stacked, as the benchmark finds them.
    """
    folder = data_dir / name
    ds = load_beir(folder)
    if embeddings is not None:
        pre = load_precomputed(embeddings)
    elif vectors_source(folder, shared_model(folder)) == "siblings":
        query_ids = list(ds.queries)
        corpus, queries = find_vectors(folder, shared_model(folder), ds.corpus_ids, query_ids)
        pre = Precomputed(corpus=corpus, queries=queries, corpus_ids=ds.corpus_ids, query_ids=query_ids)
    else:
        pre = shared_vectors(folder)
    qvec = dict(zip(pre.query_ids, pre.queries))
    train = ds.qrels["train"]
    train_q = [q for q in pre.query_ids if q in train]
    if is_xquad(folder):
        article = {q: xquad_article(train[q]) for q in train_q}
        dev_articles = set(np.random.default_rng(123).permutation(sorted(set(article.values())))[:7].tolist())
        fit_q = [q for q in train_q if article[q] not in dev_articles]
        dev = {q: train[q] for q in train_q if article[q] in dev_articles}
        return pre.corpus, pre.corpus_ids, qvec, {q: train[q] for q in fit_q}, dev
    _, fit_qrels, _, dev = dev_split(folder, ds, pre.query_ids)
    return pre.corpus, pre.corpus_ids, qvec, fit_qrels, dev


def capture_shrink():
    """Keep the weights a supervised fit had before its validated shrink, and its stage-1 weights."""
    box = {}
    fit_supervised, shrink = training.Trainer.fit_supervised, training.Trainer._shrink_toward

    def wrapped_fit(self):
        box["stage1"] = copy.deepcopy(self.net.state_dict())
        box["trainer"] = self
        return fit_supervised(self)

    def wrapped_shrink(self, start, lam, val, state):
        box["stage2"] = copy.deepcopy(self.net.state_dict())
        return shrink(self, start, lam, val, state)

    training.Trainer.fit_supervised = wrapped_fit
    training.Trainer._shrink_toward = wrapped_shrink
    return box


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dev_set_arguments(ap)
    ap.add_argument("--arms", nargs="*", default=list(DEFAULT_ARMS))
    ap.add_argument("--no-baselines", action="store_true", help="skip PCA and the unsupervised fits")
    ap.add_argument("--baseline-params", default="", help="keywords for the two unsupervised fits, e.g. "
                    "\"queries_as_candidates=False\" (recorded in their setting)")
    ap.add_argument("--article-groups", action="store_true",
                    help="XQuAD-R: pass each fit question's article as query_groups to the supervised fits "
                         "(their holdout is then whole articles; recorded in the setting)")
    ap.add_argument("--embeddings", default=None, help="another model's vectors of the set (corpus.npy, "
                    "queries.npy, ids.json), e.g. the multilingual-e5 ones of SciFact")
    ap.add_argument("--out", default="results/topic_holdout_dev.jsonl")
    args = ap.parse_args()
    if args.article_groups and not is_xquad(Path(args.data_dir) / args.dataset):
        ap.error("--article-groups needs an XQuAD-R language (--dataset xquad-r/<lang>): only there are articles known")
    C, cid, qvec, fit_qrels, dev = load_dev_data(args.dataset, Path(args.data_dir),
                                                  Path(args.embeddings) if args.embeddings else None)
    dev_q = list(dev)
    Qdev = np.stack([qvec[q] for q in dev_q])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def score(encode) -> list[float]:
        return [round(evaluate_run(dev, retrieve(encode(Qdev, m), encode(C, m), dev_q, cid))["ndcg@10"], 4)
                for m in DIMS]

    def emit(seed, setting, row, **extra):
        rec = dict(dataset=args.dataset, labels=args.labels or "all", seed=seed, setting=setting,
                   ndcg=dict(zip(DIMS, row)), **extra)
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{args.dataset} labels={rec['labels']} seed={seed} {setting}: {row} {extra or ''}", flush=True)

    def adaptor_scores(est):
        return score(lambda x, m: est.transform(x, m))

    baseline_params = eval(f"dict({args.baseline_params})")  # the script's own command line, as --arms
    box = capture_shrink()
    for seed in (int(s) for s in args.seeds.split(",")):
        fit_q = list(fit_qrels) if args.labels is None else label_subset(list(fit_qrels), fit_qrels, args.labels, seed)
        Qfit = np.stack([qvec[q] for q in fit_q])
        if not args.no_baselines:
            if seed == int(args.seeds.split(",")[0]):
                emit(seed, "pca", score(make_method("pca").fit(FitData(C, cid), DIMS, seed=0).encode))
            suffix = f" | {args.baseline_params}" if args.baseline_params else ""
            t = time.perf_counter()
            corpus_only = MatryoshkaAdaptor(dims=DIMS, progress=False, seed=seed, **baseline_params).fit(C)
            emit(seed, "corpus-only" + suffix, adaptor_scores(corpus_only), fit_s=round(time.perf_counter() - t))
            t = time.perf_counter()
            unlabelled = MatryoshkaAdaptor(dims=DIMS, progress=False, seed=seed, **baseline_params).fit(C, Qfit)
            emit(seed, "unlabelled" + suffix, adaptor_scores(unlabelled), fit_s=round(time.perf_counter() - t))
        for arm in args.arms:
            params = eval(f"dict({arm})")  # a research script's own command line, as in ablation_dev.py
            box.clear()
            t = time.perf_counter()
            groups = [xquad_article(fit_qrels[q]) for q in fit_q] if args.article_groups else None
            est = MatryoshkaAdaptor(dims=DIMS, progress=False, **{"seed": seed, **params})
            est.fit(C, Qfit, {q: fit_qrels[q] for q in fit_q}, corpus_ids=cid, query_ids=fit_q, query_groups=groups)
            secs = round(time.perf_counter() - t)
            summary = est.fit_summary_.get("supervised")
            setting = (arm or "default") + (" | article groups" if groups is not None else "")
            emit(seed, setting, adaptor_scores(est), fit_s=secs, stage2=summary,
                 stage1_queries=est.fit_summary_["unsupervised"].get("queries"))
            if "stage2" in box:  # a shrink ran: also score lambda = 1, 0.5 and 0 of this fit
                net, start, end = box["trainer"].net, box["stage1"], box["stage2"]
                for lam in (1.0, 0.5, 0.0):
                    use_net_weights(est, net, training.interpolate_weights(start, end, lam))
                    emit(seed, f"{setting} | lambda={lam}", adaptor_scores(est))


if __name__ == "__main__":
    main()
