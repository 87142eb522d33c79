"""The dev split and precomputed MiniLM vectors shared by the research scripts in this folder.

Imported as ``from dev_splits import ...`` (a script's own folder is first on ``sys.path``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from matryoshka_adaptor.embed.sources import Precomputed, load_precomputed

DEV_SEED, FIT_SHARE = 123, 0.7


def minilm_vectors(data: str | Path) -> Precomputed:
    """The precomputed all-MiniLM-L6-v2 vectors of a BEIR folder of ``../shared/data``."""
    return load_precomputed(Path(data) / "embeddings" / "all-MiniLM-L6-v2")


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
