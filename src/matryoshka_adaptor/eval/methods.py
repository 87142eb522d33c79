"""Dimension-reduction methods compared by the benchmark. Adding one is one small class.

Each method is fitted only on what it may see (``FitData``): corpus vectors, and
for some the *training-split* queries and qrels. None ever sees test queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..estimator import MatryoshkaAdaptor
from ..errors import InputError
from ..pca import principal_axes
from ..validation import l2_normalize


@dataclass
class FitData:
    corpus: np.ndarray
    corpus_ids: list[str]
    train_queries: np.ndarray | None = None
    train_query_ids: list[str] | None = None
    train_qrels: dict[str, dict[str, int]] | None = None
    train_query_groups: list[str] | None = None  # per train query: the fit's query_groups


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class Method:
    name = "method"
    description = ""
    deterministic = True  # same result for every seed: run once
    full_dim_only = False

    def fit(self, data: FitData, dims: tuple[int, ...], seed: int) -> Method:
        return self

    def encode(self, x: np.ndarray, dim: int) -> np.ndarray:
        raise NotImplementedError

    def fit_record(self) -> dict:
        """What the last fit decided that a reader of the results needs (added to each result row)."""
        return {}


class Full(Method):
    name = "full"
    description = "original vectors, all dims (the reference)"
    full_dim_only = True

    def encode(self, x, dim):
        return l2_normalize(x)


class Truncate(Method):
    name = "truncate"
    description = "first m dims, renormalised"

    def encode(self, x, dim):
        return _unit(l2_normalize(x)[:, :dim])


class PCA(Method):
    """Projection on the top principal directions of the corpus (fitted on the corpus only).

    Uncentred by default (SVD of the unit-normalised corpus): projecting without
    subtracting a mean keeps inner products comparable to cosine search on the
    originals; ``centered=True`` subtracts the corpus mean first.
    """

    name = "pca"
    description = "uncentred PCA fitted on the corpus, applied to queries and corpus alike"

    def __init__(self, centered: bool = False):
        self.centered = centered
        if centered:
            self.name, self.description = "pca-centered", "centred PCA fitted on the corpus"

    def fit(self, data, dims, seed):
        self.mean_, axes = principal_axes(l2_normalize(data.corpus), centered=self.centered)
        self.components_ = axes.astype(np.float32)
        return self

    def encode(self, x, dim):
        return _unit((l2_normalize(x) - self.mean_.astype(np.float32)) @ self.components_[:dim].T)


class Adaptor(Method):
    deterministic = False

    def __init__(self, name: str, description: str, *, supervised: bool = False, use_queries: bool = False,
                 **params):
        self.name, self.description = name, description
        self.supervised, self.use_queries, self.params = supervised, use_queries, params

    def fit(self, data, dims, seed):
        est = MatryoshkaAdaptor(dims=dims, seed=seed, progress=False, **self.params)
        if self.supervised:
            if data.train_qrels is None or data.train_queries is None:
                raise InputError(f"method {self.name} needs training queries and qrels (a train split).")
            est.fit(data.corpus, data.train_queries, data.train_qrels, corpus_ids=data.corpus_ids,
                    query_ids=data.train_query_ids, query_groups=data.train_query_groups)
        elif self.use_queries:
            if data.train_queries is None:
                raise InputError(f"method {self.name} needs training-split queries.")
            est.fit(data.corpus, data.train_queries)
        else:
            est.fit(data.corpus)
        self.adaptor_ = est
        return self

    def encode(self, x, dim):
        return self.adaptor_.transform(x, dim)

    def fit_record(self):
        stage2 = self.adaptor_.fit_summary_.get("supervised")
        if stage2 is None:
            return {}
        record = {"supervised_shrink": stage2["shrink"], "supervised_gamma": stage2["gamma"],
                  "supervised_best_step": stage2["best_step"]}
        if "held_out_groups" in stage2:
            record["supervised_held_out_groups"] = stage2["held_out_groups"]
        choice = self.adaptor_.fit_summary_["unsupervised"].get("queries")
        if choice is not None:  # use_queries="validated": what stage 1 kept
            record["stage1_kept"] = choice["kept"]
        if "fallback" in stage2:  # supervised_fallback="corpus-only": which adaptor the fit returned
            record["supervised_fallback_kept"] = stage2["fallback"]["kept"]
        return record


class FittedOn(Method):
    """A method fitted on another dataset's data and applied unchanged (cross-dataset transfer).

    The fit ignores the target dataset: ``inner`` is fitted on ``source_data`` once per (seed,
    dims) and kept in ``store`` (a dict shared by every dataset of a run), so one English adaptor
    serves every language. ``name`` is what tables show (e.g. ``adaptor-from-en``).
    """

    def __init__(self, inner: str, source_name: str, source_data: FitData, store: dict, *, name: str | None = None,
                 params: dict | None = None):
        probe = make_method(inner)
        self.inner, self.source_name, self.source_data, self.store = inner, source_name, source_data, store
        self.name = name or f"{inner}-from-{source_name}"
        self.description = f"{probe.name} fitted on {source_name}, applied unchanged"
        self.deterministic, self.full_dim_only = probe.deterministic, probe.full_dim_only
        self.supervised = getattr(probe, "supervised", False)
        self.inner_params = dict(params or {})

    def fit(self, data, dims, seed):
        key = (self.source_name, self.inner, seed, tuple(dims), tuple(sorted(self.inner_params.items())))
        if key not in self.store:
            method = make_method(self.inner)
            if hasattr(method, "params"):
                method.params.update(self.inner_params)
            self.store[key] = method.fit(self.source_data, dims, seed)
        self.fitted_ = self.store[key]
        return self

    def encode(self, x, dim):
        return self.fitted_.encode(x, dim)

    def fit_record(self):
        return self.fitted_.fit_record()


TRANSFER_SEPARATOR = "-from-"


def split_transfer_name(name: str) -> tuple[str, str] | None:
    """``"adaptor-supervised-from-en"`` -> ``("adaptor-supervised", "en")``; None for an ordinary name."""
    if TRANSFER_SEPARATOR not in name:
        return None
    inner, source = name.rsplit(TRANSFER_SEPARATOR, 1)
    return inner, source


METHODS = {
    "full": Full,
    "truncate": Truncate,
    "pca": PCA,
    "pca-centered": lambda: PCA(centered=True),
    "adaptor": lambda: Adaptor("adaptor", "unsupervised adaptor, default recipe, corpus only"),
    "adaptor-queries": lambda: Adaptor(
        "adaptor-queries", "unsupervised adaptor, default recipe, corpus + unlabeled train queries", use_queries=True),
    "adaptor-supervised": lambda: Adaptor(
        "adaptor-supervised", "supervised adaptor, default recipe, train-split qrels", supervised=True),
    "adaptor-paper": lambda: Adaptor("adaptor-paper", "the paper's unsupervised method, corpus only", recipe="paper"),
    "adaptor-paper-supervised": lambda: Adaptor(
        "adaptor-paper-supervised", "the paper's supervised method, train-split qrels", supervised=True,
        recipe="paper"),
}


def make_method(name: str) -> Method:
    if name not in METHODS and split_transfer_name(name) is not None:
        raise InputError(f"method {name!r} is fitted on another dataset: run the benchmark over several datasets, "
                         f"{split_transfer_name(name)[1]!r} among them.")
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; choose from {', '.join(METHODS)}.")
    return METHODS[name]()
