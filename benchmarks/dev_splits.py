"""The dev split, precomputed vectors, XQuAD-R article ids and the scoring of a fit's intermediate weights,
shared by the research scripts in this folder.

Imported as ``from dev_splits import ...`` (a script's own folder is first on ``sys.path``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from matryoshka_adaptor.embed.sources import Precomputed, load_precomputed

DEV_SEED, FIT_SHARE = 123, 0.7


PARAGRAPHS_PER_ARTICLE = 5  # XQuAD: 240 paragraphs of 48 articles, in article order
MINILM, E5 = "all-MiniLM-L6-v2", "multilingual-e5-small-q4"  # the models of ../shared/data's vectors


def minilm_vectors(data: str | Path) -> Precomputed:
    """The precomputed all-MiniLM-L6-v2 vectors of a BEIR folder of ``../shared/data``."""
    return load_precomputed(Path(data) / "embeddings" / MINILM)


def is_xquad(data: str | Path) -> bool:
    return "xquad-r" in Path(data).parts


def shared_model(data: str | Path) -> str:
    """The model of the precomputed vectors the scripts use in a ``../shared/data`` folder."""
    return E5 if is_xquad(data) else MINILM


def shared_vectors(data: str | Path) -> Precomputed:
    """The precomputed vectors of a ``../shared/data`` folder: multilingual-e5 for XQuAD-R, else MiniLM."""
    return load_precomputed(Path(data) / "embeddings" / shared_model(data))


def xquad_article(positives) -> int:
    """The XQuAD-R article a question asks about, from its relevant corpus ids ("<lang>-p<paragraph>s<sentence>")."""
    return int(next(iter(positives)).split("-p")[1].split("s")[0]) // PARAGRAPHS_PER_ARTICLE


def dev_split(data: str | Path, ds, query_ids: list[str], *, use_dev_qrels: bool = True):
    """(fit query ids, their qrels, dev query ids, dev qrels) — never the test split.

    A data set with a dev split (NFCorpus; unless ``use_dev_qrels=False``): fit on train, score on
    dev. Otherwise (SciFact: train and test only): the train queries split 70/30 with seed 123, in
    ``query_ids`` order.
    """
    if use_dev_qrels and "dev" in ds.qrels and Path(data).name != "scifact":
        fit_q = [q for q in query_ids if q in ds.qrels["train"]]
        dev_q = [q for q in query_ids if q in ds.qrels["dev"]]
        return fit_q, {q: ds.qrels["train"][q] for q in fit_q}, dev_q, {q: ds.qrels["dev"][q] for q in dev_q}
    train = ds.qrels["train"]
    train_q = [q for q in query_ids if q in train]
    perm = np.random.default_rng(DEV_SEED).permutation(len(train_q))
    cut = int(FIT_SHARE * len(train_q))
    fit_q, dev_q = [train_q[i] for i in sorted(perm[:cut])], [train_q[i] for i in sorted(perm[cut:])]
    return fit_q, {q: train[q] for q in fit_q}, dev_q, {q: train[q] for q in dev_q}


def add_dev_set_arguments(ap) -> None:
    """The command-line options every dev-split script shares: which set, where, how many labels, seeds."""
    ap.add_argument("--dataset", required=True, help="scifact, nfcorpus or xquad-r/<lang>")
    ap.add_argument("--data-dir", default=os.environ.get("MA_DATA_DIR", "../shared/data"))
    ap.add_argument("--labels", type=int, default=None, help="fit on this many labelled queries (default: all)")
    ap.add_argument("--seeds", default="0")


def use_net_weights(est, net, state: dict | None = None) -> None:
    """Make a fitted ``MatryoshkaAdaptor`` transform with ``net``'s weights (after loading ``state`` into it):
    how the scripts score weights a fit passed through (a checkpoint, a shrink, an average of runs)."""
    if state is not None:
        net.load_state_dict(state)
    est.weights_ = {k: v.numpy() for k, v in net.export_weights().items()}
    est._numpy = None  # the inference cache holds the previous weights
