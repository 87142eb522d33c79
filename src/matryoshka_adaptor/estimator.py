"""The public estimator: ``MatryoshkaAdaptor`` (scikit-learn shape, numpy in and out).

``__init__`` only stores parameters; ``fit`` returns self and sets attributes
ending in ``_``; ``transform`` never refits and runs on numpy alone (torch is
imported only by ``fit`` and by ``transform(..., backend="torch")``).
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import NotFittedError
from . import persistence
from ._version import __version__
from .inference import NumpyAdaptor
from .neighbors import mine_neighbors, neighbors_in_corpus
from .scaling import large_input_architecture, uncentred_pca_basis
from .validation import (
    InputError,
    check_dims,
    check_embeddings,
    check_ids,
    check_output_dim,
    check_qrels,
    l2_normalize,
)

# Named training recipes. "paper" is Yoon et al. (2024) as written: identity start,
# L1 similarity losses (top-k, pairwise, reconstruction), logistic ranking loss on raw
# cosines. "default" adds what the ablations in docs/ablations.md support.
RECIPES: dict[str, dict] = {
    "paper": dict(init="identity", topk_weight=1.0, alpha=1.0, beta=1.0, supervised_beta=1.0, gamma=1.0,
                  listwise_weight=0.0, rank_scale=1.0, steps=1500, supervised_steps=1000, hard_negatives=0,
                  learn_rotation=False, listwise_negatives=0, query_fraction=0.0,
                  ema_decay=0.0, dynamic_negatives=0),
    # Chosen on a SciFact dev split carved from the train queries (docs/ablations.md).
    "default": dict(init="pca", topk_weight=0.0, alpha=0.0, beta=20.0, supervised_beta=1.0, gamma=1.0,
                    listwise_weight=1.0, rank_scale=20.0, steps=400, supervised_steps=1000, hard_negatives=16,
                    learn_rotation=True, listwise_negatives=0, query_fraction=0.25, ema_decay=0.0,
                    dynamic_negatives=16),
}
# The parameters a recipe sets (every recipe sets all of them); an explicit value overrides the recipe's.
_RECIPE_KEYS = tuple(RECIPES["default"])


def default_dims(input_dim: int) -> tuple[int, ...]:
    """Powers of two from 16 below the input dim, plus the input dim itself."""
    dims, m = [], 16
    while m < input_dim:
        dims.append(m)
        m *= 2
    return tuple(dims + [input_dim])


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class MatryoshkaAdaptor:
    """Learn ``e' = e + f(e)`` so that the first m dims of ``e'`` keep retrieval quality.

    Parameters
    ----------
    dims : Matryoshka dims trained jointly (default: 16, 32, ... below d, and d).
    recipe : "default" (PCA start + listwise distillation + reconstruction, see docs/ablations.md)
        or "paper" (the paper's exact method). Parameters left at None take the recipe's value.
    hidden_dim, depth : MLP width (default: input dim; d/4 above 1,024 dims, see scaling.py) and
        number of linear layers.
    rotation_dims : with ``learn_rotation``, learn the rotation only in the leading this-many PCA
        coordinates (default: all up to 1,024 input dims; above, the largest trained dim <= d/4).
    init : "pca" (start from the uncentred PCA rotation of the corpus) or "identity".
    learn_rotation : train the rotation too, kept exactly orthogonal (saved as a fixed matrix).
    k : neighbours per anchor for the top-k loss, mined on the original full-dim vectors.
    alpha, beta, gamma : weights of the pairwise, reconstruction and ranking losses.
    supervised_beta : reconstruction weight in the supervised stage (the labels define the goal
        there, so the default recipe relaxes the strong stage-1 reconstruction).
    topk_weight, listwise_weight : weights of the paper's top-k loss and the listwise KL term.
    temperature : softmax temperature of the listwise term.
    rank_scale : multiplies cosine differences inside the ranking loss (1 = paper).
    hard_negatives : per labeled query, its top full-dim corpus neighbours added to the supervised
        batch (unjudged ones act as negatives; 0 = random negatives only, as in the paper).
    listwise_negatives : random corpus rows added to the listwise pool of every unsupervised step
        (0 = the batch's anchors and their neighbours only).
    query_fraction : minimum share of query anchors in each batch of an unsupervised fit with
        (unlabeled) queries: they are usually outnumbered by documents. 0 = draw anchors uniformly,
        as a supervised fit always does in both stages.
    dynamic_negatives : per labeled query, its top corpus rows in the current adapted space (mean
        prefix cosine over the dims), re-mined every ``eval_every`` steps and added to the
        supervised batch next to the full-dim ``hard_negatives`` (0 = off).
    ema_decay : exponential moving average of the weights (0 = off); the averaged weights are
        validated and returned.
    steps, supervised_steps : maximum steps of stage 1 and stage 2 (early stopping may end sooner).
    use_queries : let the unsupervised losses also see query vectors (no labels needed).
    max_fit_vectors : corpus rows sampled for fitting (bigger corpora are sampled, not loaded whole).
    neighbor_search : "auto", "exact" or "faiss".
    neighbors_from : when the corpus is sampled (above ``max_fit_vectors``), mine the sampled
        anchors' neighbours in the "sample" or in the whole "corpus" (streamed from the memory-mapped
        array; the neighbour rows found are added to the training rows).
    device : "auto" (GPU when there is one), "cpu", "cuda", ...
    """

    def __init__(
        self,
        dims: Sequence[int] | None = None,
        *,
        recipe: str = "default",
        hidden_dim: int | None = None,
        rotation_dims: int | None = None,
        depth: int = 2,
        init: str | None = None,
        learn_rotation: bool | None = None,
        k: int = 10,
        alpha: float | None = None,
        beta: float | None = None,
        supervised_beta: float | None = None,
        gamma: float | None = None,
        topk_weight: float | None = None,
        listwise_weight: float | None = None,
        temperature: float = 0.05,
        rank_scale: float | None = None,
        steps: int | None = None,
        supervised_steps: int | None = None,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        random_negatives: int = 64,
        listwise_negatives: int | None = None,
        query_fraction: float | None = None,
        ema_decay: float | None = None,
        dynamic_negatives: int | None = None,
        hard_negatives: int | None = None,
        validation_fraction: float = 0.1,
        eval_every: int = 100,
        patience: int = 5,
        use_queries: bool = True,
        max_fit_vectors: int = 50_000,
        neighbor_search: str = "auto",
        neighbors_from: str = "sample",
        seed: int = 0,
        device: str = "auto",
        progress: bool = True,
        base_model: str | None = None,
    ):
        self.dims = dims
        self.recipe = recipe
        self.hidden_dim = hidden_dim
        self.rotation_dims = rotation_dims
        self.depth = depth
        self.init = init
        self.learn_rotation = learn_rotation
        self.k = k
        self.alpha = alpha
        self.beta = beta
        self.supervised_beta = supervised_beta
        self.gamma = gamma
        self.topk_weight = topk_weight
        self.listwise_weight = listwise_weight
        self.temperature = temperature
        self.rank_scale = rank_scale
        self.steps = steps
        self.supervised_steps = supervised_steps
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.random_negatives = random_negatives
        self.listwise_negatives = listwise_negatives
        self.query_fraction = query_fraction
        self.ema_decay = ema_decay
        self.dynamic_negatives = dynamic_negatives
        self.hard_negatives = hard_negatives
        self.validation_fraction = validation_fraction
        self.eval_every = eval_every
        self.patience = patience
        self.use_queries = use_queries
        self.max_fit_vectors = max_fit_vectors
        self.neighbor_search = neighbor_search
        self.neighbors_from = neighbors_from
        self.seed = seed
        self.device = device
        self.progress = progress
        self.base_model = base_model

    # ------------------------------------------------------- sklearn protocol
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> MatryoshkaAdaptor:
        valid = set(self._param_names())
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"unknown parameter {key!r}; valid parameters: {sorted(valid)}")
            setattr(self, key, value)
        return self

    def clone(self) -> MatryoshkaAdaptor:
        """A new, unfitted adaptor with the same parameters."""
        return type(self)(**self.get_params())

    def __repr__(self) -> str:
        defaults = {p: v.default for p, v in inspect.signature(type(self).__init__).parameters.items()}
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if defaults.get(k) != v]
        return f"{type(self).__name__}({', '.join(changed)})"

    def __eq__(self, other) -> bool:
        """Equal when parameters are equal and, if fitted, the weights are identical."""
        if type(other) is not type(self) or self.get_params() != other.get_params():
            return False
        a, b = getattr(self, "weights_", None), getattr(other, "weights_", None)
        if a is None or b is None:
            return a is b
        return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    __hash__ = None

    # ------------------------------------------------------------------- fit
    def resolved_settings(self) -> dict:
        """The recipe merged with explicitly given parameters: what ``fit`` actually uses."""
        if self.recipe not in RECIPES:
            raise InputError(f"unknown recipe {self.recipe!r}; choose one of {sorted(RECIPES)}.")
        settings = dict(RECIPES[self.recipe])
        for key in _RECIPE_KEYS:
            if getattr(self, key) is not None:
                settings[key] = getattr(self, key)
        if settings["init"] not in ("pca", "identity"):
            raise InputError(f"init must be 'pca' or 'identity'; got {settings['init']!r}.")
        params = self.get_params()
        for key in ("dims", "recipe", "progress", "device", "base_model"):
            params.pop(key)
        return {**params, **settings}

    def fit(
        self,
        corpus,
        queries=None,
        qrels: Mapping[str, Mapping[str, float]] | None = None,
        *,
        corpus_ids: Sequence[str] | None = None,
        query_ids: Sequence[str] | None = None,
    ) -> MatryoshkaAdaptor:
        """Fit on corpus vectors; with ``queries`` and ``qrels`` also run the supervised stage.

        ``qrels`` maps query id -> {doc id -> relevance grade}; ids default to row numbers.
        ``queries`` without ``qrels`` are used unlabeled by the unsupervised losses.
        """
        import torch

        from .nn.module import AdaptorNet
        from .nn.training import LossWeights, SupervisedData, Trainer, UnsupervisedData

        s = self.resolved_settings()
        started = time.perf_counter()
        corpus = check_embeddings(corpus, name="corpus")
        n, d = corpus.shape
        dims = check_dims(self.dims if self.dims is not None else default_dims(d), d)
        if queries is not None:
            queries = check_embeddings(queries, name="queries")
            if queries.shape[1] != d:
                raise InputError(
                    f"queries have dimension {queries.shape[1]} but the corpus has {d}; embed both with the same model."
                )
        if qrels is not None and queries is None:
            raise InputError("qrels were given without queries; pass the query vectors as well (queries=...).")
        if qrels is not None:
            # A raised query share made a worse start for the supervised stage (docs/ablations.md,
            # round 3): it applies to fits without labels only (and settings_ records what ran).
            s["query_fraction"] = 0.0
        rng = np.random.default_rng(self.seed)
        torch.manual_seed(self.seed)
        cids = check_ids(corpus_ids, n, name="corpus_ids")

        # Sample the rows training uses; labeled documents are always kept.
        rows = np.arange(n)
        sup_positions: list[list[tuple[str, float]]] | None = None
        if qrels is not None:
            qids = check_ids(query_ids, len(queries), name="query_ids")
            clean = check_qrels(qrels, qids, cids)
            sup_positions = [[(doc, g) for doc, g in clean.get(q, {}).items() if g > 0] for q in qids]
        if n > self.max_fit_vectors:
            keep = rng.choice(n, size=self.max_fit_vectors, replace=False)
            if sup_positions is not None:
                pos_of = {c: i for i, c in enumerate(cids)}
                labeled = {pos_of[doc] for plist in sup_positions for doc, _ in plist}
                keep = np.union1d(keep, np.fromiter(labeled, dtype=np.int64))
            rows = np.sort(keep)
        sample = l2_normalize(np.asarray(corpus[rows], dtype=np.float32), name="corpus")
        q_unit = l2_normalize(np.asarray(queries, dtype=np.float32), name="queries") if queries is not None else None

        rotation = None
        if s["init"] == "pca":
            # Uncentred PCA basis: an orthogonal rotation, so full-dim cosines are unchanged
            # and the leading coordinates carry the most energy.
            rotation = uncentred_pca_basis(sample, rng)

        # Anchors: every sampled corpus row, plus queries (unlabeled use) when allowed.
        k = min(self.k, len(sample) - 1)
        if k < 1:
            raise InputError("the corpus needs at least 2 vectors to mine neighbours for training.")
        device = resolve_device(self.device)
        if self.neighbors_from not in ("sample", "corpus"):
            raise InputError(f"neighbors_from must be 'sample' or 'corpus'; got {self.neighbors_from!r}.")
        if self.neighbors_from == "corpus" and len(rows) < n:
            # A sampled corpus: the anchors' neighbours come from every row (neighbors.neighbors_in_corpus);
            # `sample` becomes the sampled rows followed by the neighbour rows found outside them.
            n_sampled = len(sample)
            sample, nb, qnb = neighbors_in_corpus(
                corpus, rows, sample, k, queries=q_unit if self.use_queries else None, method=self.neighbor_search,
                device=device, progress=self.progress, seed=self.seed)
        else:
            n_sampled = len(sample)
            nb = mine_neighbors(sample, sample, k, exclude=np.arange(len(sample)), method=self.neighbor_search,
                                progress=self.progress, seed=self.seed, device=device)
            qnb = None
            if q_unit is not None and self.use_queries:
                qnb = mine_neighbors(q_unit, sample, k, method=self.neighbor_search, progress=self.progress,
                                     seed=self.seed, device=device)
        anchors, nb_idx, nb_sims = sample[:n_sampled], nb.indices, nb.scores
        if qnb is not None:
            anchors = np.concatenate([anchors, q_unit])
            nb_idx = np.concatenate([nb_idx, qnb.indices])
            nb_sims = np.concatenate([nb_sims, qnb.scores])
        mining_seconds = time.perf_counter() - started

        auto_hidden, auto_rotation_dims = large_input_architecture(d, dims)  # (d, None) up to 1,024 dims
        hidden = self.hidden_dim or auto_hidden
        net = AdaptorNet(d, hidden, self.depth, None if rotation is None else torch.from_numpy(rotation),
                         learn_rotation=s["learn_rotation"], rotation_dims=self.rotation_dims or auto_rotation_dims)
        weights = LossWeights(topk=s["topk_weight"], pair=s["alpha"], rec=s["beta"],
                              listwise=s["listwise_weight"], rank=s["gamma"])
        trainer = Trainer(
            net, dims, weights, lr=self.lr, weight_decay=self.weight_decay, batch_size=self.batch_size,
            temperature=self.temperature, rank_scale=s["rank_scale"], random_negatives=self.random_negatives,
            listwise_negatives=s["listwise_negatives"], query_fraction=s["query_fraction"],
            ema_decay=s["ema_decay"], dynamic_negatives=s["dynamic_negatives"],
            validation_fraction=self.validation_fraction, eval_every=self.eval_every, patience=self.patience,
            seed=self.seed, device=device, progress=self.progress,
        )
        unsup = UnsupervisedData(sample, anchors, nb_idx, nb_sims, corpus_anchors=n_sampled)
        stage1 = trainer.fit_unsupervised(unsup, s["steps"])
        history = {"unsupervised": stage1.history}
        last = stage1.history[-1]["val"] if stage1.history else None
        summary = {"unsupervised": {"steps_run": stage1.steps_run, "val_neighbor_recall_start": stage1.initial_score,
                                    "val_neighbor_recall_end": last}}
        if sup_positions is not None:
            row_of = {cids[r]: i for i, r in enumerate(rows)}
            positives = [[(row_of[doc], g) for doc, g in plist] for plist in sup_positions]
            hard = None
            if s["hard_negatives"] > 0:
                hard = mine_neighbors(q_unit, sample, min(s["hard_negatives"], len(sample)),
                                      method=self.neighbor_search, progress=self.progress, seed=self.seed,
                                      device=device).indices
            trainer.w = dataclasses.replace(weights, rec=s["supervised_beta"])
            stage2 = trainer.fit_supervised(unsup, SupervisedData(q_unit, positives, hard), s["supervised_steps"])
            history["supervised"] = stage2.history
            summary["supervised"] = {"steps_run": stage2.steps_run, "best_step": stage2.best_step,
                                     "best_val_ndcg@10": stage2.best_score}

        net = net.cpu()
        self.weights_ = {k_: v.numpy() for k_, v in net.export_weights().items()}
        self.input_dim_ = d
        self.n_features_in_ = d
        self.dims_ = dims
        self.hidden_dim_ = hidden
        self.settings_ = s
        self.supervised_ = sup_positions is not None
        self.history_ = history
        self.fit_summary_ = {
            **summary,
            "n_corpus": n,
            "n_fit_vectors": len(sample),
            "n_queries": 0 if queries is None else len(queries),
            "neighbor_search": nb.method,
            "neighbor_recall": nb.recall_at_k,
            "mining_seconds": round(mining_seconds, 3),
            "total_seconds": round(time.perf_counter() - started, 3),
            "device": device,
        }
        self._numpy = None
        return self

    # ------------------------------------------------------------- transform
    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise NotFittedError("this MatryoshkaAdaptor is not fitted; call fit(...) or MatryoshkaAdaptor.load(path).")

    def _numpy_adaptor(self) -> NumpyAdaptor:
        if getattr(self, "_numpy", None) is None:
            self._numpy = NumpyAdaptor(self.weights_)
        return self._numpy

    def transform(self, x, dim: int | None = None, *, backend: str = "numpy", chunk_rows: int = 8192) -> np.ndarray:
        """Adapted vectors cut to the first ``dim`` dims (default: all) and L2-normalised.

        ``backend="numpy"`` needs no torch; ``"torch"`` runs the torch module (same numbers to 1e-5).
        Memory-mapped input is processed in chunks of ``chunk_rows``.
        """
        self._check_fitted()
        x = check_embeddings(x, name="vectors", expected_dim=self.input_dim_)
        dim = check_output_dim(dim, self.input_dim_)
        if backend == "numpy":
            return self._numpy_adaptor().apply_chunked(x, dim, chunk_rows=chunk_rows)
        if backend == "torch":
            import torch

            net = self.to_torch()
            out = []
            with torch.no_grad():
                for s in range(0, x.shape[0], chunk_rows):
                    chunk = l2_normalize(np.asarray(x[s : s + chunk_rows]), name="vectors", offset=s)
                    adapted = net(torch.from_numpy(chunk))[0][:, :dim]
                    out.append(torch.nn.functional.normalize(adapted, dim=-1).numpy())
            return np.concatenate(out)
        raise InputError(f"backend must be 'numpy' or 'torch'; got {backend!r}.")

    def to_torch(self):
        """The fitted adaptor as an ``AdaptorNet`` (torch module) on the CPU, in eval mode."""
        import torch

        from .nn.module import AdaptorNet

        self._check_fitted()
        rot = self.weights_.get("rotation")
        net = AdaptorNet(self.input_dim_, self.hidden_dim_, self.depth, None if rot is None else torch.from_numpy(rot))
        net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in self.weights_.items()})
        return net.eval()

    # ------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into the folder ``path`` (atomically)."""
        self._check_fitted()
        params = self.get_params()
        params["dims"] = list(self.dims_)
        config = {
            "library_version": __version__,
            "input_dim": self.input_dim_,
            "dims": list(self.dims_),
            "architecture": {"hidden_dim": self.hidden_dim_, "depth": self.depth,
                             "rotation": "rotation" in self.weights_},
            "supervised": self.supervised_,
            "base_model": self.base_model,
            "params": params,
            "training": {"settings": self.settings_, "summary": self.fit_summary_},
        }
        return persistence.save_folder(path, config, self.weights_)

    @classmethod
    def load(cls, path: str | Path) -> MatryoshkaAdaptor:
        """Load an adaptor folder written by ``save``; refuses foreign, corrupt or newer-format folders."""
        config, weights = persistence.load_folder(path)
        try:
            d = int(config["input_dim"])
            arch = config["architecture"]
            known = set(cls._param_names())
            params = {k: v for k, v in config.get("params", {}).items() if k in known}
            params["progress"] = False
            est = cls(**params)
            est.depth = int(arch["depth"])
            expected = {f"layers.{i}.{p}" for i in range(est.depth) for p in ("weight", "bias")}
            if arch.get("rotation"):
                expected.add("rotation")
            if set(weights) != expected:
                raise persistence.AdaptorFileError(
                    f"{path}: weights {sorted(weights)} do not match the architecture in config.json; the folder is corrupt."
                )
            if weights["layers.0.weight"].shape[1] != d or weights[f"layers.{est.depth - 1}.weight"].shape[0] != d:
                raise persistence.AdaptorFileError(f"{path}: weight shapes do not match input_dim={d}; the folder is corrupt.")
            est.weights_ = dict(weights)
            est.input_dim_ = est.n_features_in_ = d
            est.dims_ = tuple(config["dims"])
            est.hidden_dim_ = int(arch["hidden_dim"])
            est.supervised_ = bool(config.get("supervised", False))
            est.settings_ = config.get("training", {}).get("settings", {})
            est.fit_summary_ = config.get("training", {}).get("summary", {})
            est.history_ = {}
            est.library_version_ = config.get("library_version")
            est._numpy = None
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise persistence.AdaptorFileError(f"{path}/config.json is missing or has a bad field ({exc}).") from exc
        return est

    def info(self) -> dict:
        """A JSON-able summary of a fitted adaptor."""
        self._check_fitted()
        n_params = int(sum(np.asarray(v).size for k, v in self.weights_.items() if k != "rotation"))
        return {
            "input_dim": self.input_dim_,
            "dims": list(self.dims_),
            "hidden_dim": self.hidden_dim_,
            "depth": self.depth,
            "rotation": "rotation" in self.weights_,
            "trainable_parameters": n_params,
            "supervised": self.supervised_,
            "recipe": self.recipe,
            "base_model": self.base_model,
            "fit_summary": self.fit_summary_,
        }
