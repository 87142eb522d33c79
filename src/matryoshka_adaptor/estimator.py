"""The public estimator: ``MatryoshkaAdaptor`` (numpy in and out).

It follows scikit-learn's conventions without being a scikit-learn estimator (scikit-learn is not
a dependency): parameters are stored by ``__init__`` (and validated there, unlike scikit-learn),
``get_params`` / ``set_params`` / ``clone`` work as there, ``fit`` returns self and sets attributes
ending in ``_``, and ``transform`` never refits and runs on numpy alone (torch is imported only by
``fit`` and by ``transform(..., backend="torch")``).

The parameters are the fields of :class:`~matryoshka_adaptor.config.AdaptorConfig`, which holds
their one definition (type, default, range); a parameter left at ``None`` takes the recipe's value,
else that default.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from . import persistence, weight_names
from ._version import __version__
from .config import FIELDS, RECIPES, AdaptorConfig, _field_doc, check_param, default_dims  # noqa: F401
from .errors import InputError, NotFittedError
from .inference import NumpyAdaptor
from .validation import check_embeddings, check_output_dim, l2_normalize

# Parameters besides ``dims`` and ``recipe``: every other config field, keyword-only, None = unset.
_TUNABLE = tuple(name for name in FIELDS if name not in ("dims", "recipe"))


def _optional(annotation: str) -> str:
    return annotation if annotation.endswith("None") else f"{annotation} | None"


def _signature() -> inspect.Signature:
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
              inspect.Parameter("dims", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                annotation=FIELDS["dims"].type),
              inspect.Parameter("recipe", kw, default="default", annotation="str")]
    params += [inspect.Parameter(name, kw, default=None, annotation=_optional(FIELDS[name].type))
               for name in _TUNABLE]
    return inspect.Signature(params)


def _parameters_doc() -> str:
    return "\n".join(
        _field_doc(name, f, f"default {f.default!r}" if name in ("dims", "recipe")
                   else f"default None (the recipe's, else {f.default!r})")
        for name, f in FIELDS.items())


class MatryoshkaAdaptor:
    """Learn ``e' = e + f(e)`` so that the first m dims of ``e'`` keep retrieval quality.

    Parameters
    ----------
    dims : sequence of int, optional
        Matryoshka dims trained jointly (default: 16, 32, ... below d, and d).
    recipe : {"default", "paper"}, default "default"
        "default" (PCA start + listwise distillation + reconstruction, see docs/ablations.md) or
        "paper" (the paper's exact method). Parameters left at None take the recipe's value.
    **params
        Any other field of :class:`~matryoshka_adaptor.config.AdaptorConfig` (listed below with
        its meaning, default and valid range). A bad value raises ``InputError`` here, at once.

    Attributes
    ----------
    weights_ : dict of str to ndarray
        The fitted weights (names: :mod:`matryoshka_adaptor.weight_names`).
    input_dim_, n_features_in_ : int
        Dimension of the input vectors.
    dims_ : tuple of int
        The Matryoshka dims trained.
    hidden_dim_ : int
        Width of the MLP.
    depth_ : int
        Number of linear layers of the MLP.
    settings_ : AdaptorConfig
        Every setting the fit used.
    supervised_ : bool
        Whether the supervised stage ran.
    history_ : dict
        Validation history per stage (empty after ``load``).
    fit_summary_ : dict
        Steps run, validation scores, sizes, timings and device of the fit.

    Notes
    -----
    Every parameter:

{params}
    """

    def __init__(self, dims=None, *, recipe="default", **params):
        unknown = sorted(set(params) - set(_TUNABLE))
        if unknown:
            raise InputError(f"unknown parameter {unknown[0]!r}; valid parameters: {', '.join(FIELDS)}.")
        self.dims = dims
        self.recipe = recipe
        for name in _TUNABLE:
            setattr(self, name, params.get(name))
        self.resolved_settings()  # a bad value fails here, with one line naming it

    __init__.__signature__ = _signature()

    # ------------------------------------------------------- parameters
    @classmethod
    def _param_names(cls) -> list[str]:
        return ["dims", "recipe", *_TUNABLE]

    def get_params(self, deep: bool = True) -> dict:
        """The parameters as given (None: unset, the recipe's value or the default applies)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> MatryoshkaAdaptor:
        """Set parameters (validated together; nothing changes if one is bad)."""
        valid = set(self._param_names())
        for key in params:
            if key not in valid:
                raise InputError(f"unknown parameter {key!r}; valid parameters: {sorted(valid)}")
        type(self)(**{**self.get_params(), **params})  # validates the combination
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def clone(self) -> MatryoshkaAdaptor:
        """A new, unfitted adaptor with the same parameters."""
        return type(self)(**self.get_params())

    def __repr__(self) -> str:
        defaults = {p: v.default for p, v in inspect.signature(type(self).__init__).parameters.items()}
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if defaults.get(k) != v]
        return f"{type(self).__name__}({', '.join(changed)})"

    def _identity(self) -> dict:
        settings = self.resolved_settings().to_dict()
        settings.pop("progress")  # how a fit is shown is not what it is
        return settings

    def __eq__(self, other) -> bool:
        """Equal when the resolved settings are equal and, if fitted, the weights are identical."""
        if type(other) is not type(self) or self._identity() != other._identity():
            return False
        a, b = getattr(self, "weights_", None), getattr(other, "weights_", None)
        if a is None or b is None:
            return a is b
        return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    __hash__ = None

    def resolved_settings(self) -> AdaptorConfig:
        """The recipe's values, overridden by explicitly given parameters: what ``fit`` uses."""
        return AdaptorConfig.from_recipe(self.recipe, dims=self.dims,
                                         **{name: getattr(self, name) for name in _TUNABLE})

    # ------------------------------------------------------------------- fit
    def fit(
        self,
        corpus,
        queries=None,
        qrels: Mapping[str, Mapping[str, float]] | None = None,
        *,
        corpus_ids: Sequence[str] | None = None,
        query_ids: Sequence[str] | None = None,
        query_groups: Sequence[str | int] | None = None,
    ) -> MatryoshkaAdaptor:
        """Fit on corpus vectors; with ``queries`` and ``qrels`` also run the supervised stage.

        Parameters
        ----------
        corpus : array-like of shape (n, d)
            Corpus vectors (a memory-mapped ``.npy`` of any float dtype is sampled, not loaded whole).
        queries : array-like of shape (q, d), optional
            Query vectors: used unlabelled by the unsupervised losses, and labelled with ``qrels``.
        qrels : mapping of str to mapping of str to float, optional
            query id -> {doc id -> relevance grade}; runs the supervised stage.
        corpus_ids, query_ids : sequence of str, optional
            Ids of the rows (default: row numbers).
        query_groups : sequence of str or int, optional
            One label per query row (its topic, article or source; needs ``qrels``). The labelled
            queries the supervised fit holds out for its checks (early stopping, the shrink, the
            ``"validated"`` choices) are then whole groups, as scikit-learn's ``GroupShuffleSplit``
            draws them: give it when the queries you will serve are about topics your labels never
            touch, which a random holdout cannot see (docs/ablations.md). The tests for evidence
            beyond noise (``use_queries="validated"``, ``supervised_shrink="auto"``,
            ``supervised_fallback``) then count groups, not queries: a sign-flip randomisation
            test over the held-out groups, so fewer than five held-out groups never show a gain (the
            fit then warns, ``HeldOutEvidenceWarning``, before training; raise ``validation_fraction``
            to hold out more). Default: a random holdout.

        Returns
        -------
        self : MatryoshkaAdaptor
        """
        from .fitting import check_fit_inputs, fit_adaptor

        config = self.resolved_settings()
        inputs = check_fit_inputs(corpus, queries, qrels, corpus_ids, query_ids, config.dims, query_groups)
        result = fit_adaptor(inputs, config)
        self.weights_ = result.weights
        self.input_dim_ = self.n_features_in_ = result.input_dim
        self.dims_ = result.dims
        self.hidden_dim_ = result.hidden_dim
        self.depth_ = result.settings.depth
        self.settings_ = result.settings
        self.supervised_ = inputs.supervised
        self.history_ = result.history
        self.fit_summary_ = result.summary
        self._numpy = None
        return self

    # ------------------------------------------------------------- transform
    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise NotFittedError("this MatryoshkaAdaptor is not fitted; call fit(...) or MatryoshkaAdaptor.load(path).")

    def numpy_adaptor(self) -> NumpyAdaptor:
        """The fitted adaptor as a :class:`~matryoshka_adaptor.inference.NumpyAdaptor` (built once, no torch).

        Its ``apply(chunk, dim, offset=...)`` adapts rows already checked for shape: what a
        streaming caller (``transform`` on files, the server) runs per chunk.
        """
        self._check_fitted()
        if getattr(self, "_numpy", None) is None:
            self._numpy = NumpyAdaptor(self.weights_)
        return self._numpy

    def transform(self, x, dim: int | None = None, *, backend: str = "numpy", chunk_rows: int = 8192) -> np.ndarray:
        """Adapted vectors cut to the first ``dim`` dims (default: all) and L2-normalised.

        Parameters
        ----------
        x : array-like of shape (n, d)
        dim : int, optional
            Output dimension, 1 to d (default: d).
        backend : {"numpy", "torch"}, default "numpy"
            "numpy" needs no torch; "torch" runs the torch module (same numbers to 1e-5).
        chunk_rows : int, default 8192
            Rows processed at a time (memory-mapped input is never loaded whole).

        Returns
        -------
        ndarray of shape (n, dim), float32
        """
        self._check_fitted()
        x = check_embeddings(x, name="vectors", expected_dim=self.input_dim_)
        dim = check_output_dim(dim, self.input_dim_)
        if backend == "numpy":
            return self.numpy_adaptor().apply_chunked(x, dim, chunk_rows=chunk_rows)
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
        from .nn.module import AdaptorNet

        self._check_fitted()
        return AdaptorNet.from_weights({k: np.asarray(v) for k, v in self.weights_.items()}).eval()

    # ------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into the folder ``path`` (atomically)."""
        self._check_fitted()
        params = self.get_params()
        if params["dims"] is not None:
            params["dims"] = list(check_param("dims", params["dims"]))
        config = {
            "library_version": __version__,
            "input_dim": self.input_dim_,
            "dims": list(self.dims_),
            "architecture": {"hidden_dim": self.hidden_dim_, "depth": self.depth_,
                             "rotation": weight_names.ROTATION in self.weights_},
            "supervised": self.supervised_,
            "base_model": self.settings_.base_model,
            "params": params,
            "training": {"settings": self.settings_.to_dict(), "summary": self.fit_summary_},
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
            if params.get("dims") is not None:
                params["dims"] = tuple(params["dims"])
            params["progress"] = False
            est = cls(**params)
            depth = int(arch["depth"])
            expected = weight_names.expected_names(depth, bool(arch.get("rotation")))
            if set(weights) != expected:
                raise persistence.AdaptorFileError(
                    f"{path}: weights {sorted(weights)} do not match the architecture in config.json; the folder is corrupt."
                )
            first, last = weight_names.layer_weight(0), weight_names.layer_weight(depth - 1)
            if weights[first].shape[1] != d or weights[last].shape[0] != d:
                raise persistence.AdaptorFileError(f"{path}: weight shapes do not match input_dim={d}; the folder is corrupt.")
            est.weights_ = dict(weights)
            est.input_dim_ = est.n_features_in_ = d
            est.dims_ = tuple(int(m) for m in config["dims"])
            est.depth_ = depth
            est.hidden_dim_ = int(arch["hidden_dim"])
            est.supervised_ = bool(config.get("supervised", False))
            saved = config.get("training", {}).get("settings", {})
            est.settings_ = AdaptorConfig(**{**{k: v for k, v in saved.items() if k in FIELDS},
                                             "dims": est.dims_, "progress": False})
            est.fit_summary_ = config.get("training", {}).get("summary", {})
            est.history_ = {}
            est.library_version_ = config.get("library_version")
            est._numpy = None
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, persistence.AdaptorFileError):
                raise
            raise persistence.AdaptorFileError(f"{path}/config.json is missing or has a bad field ({exc}).") from exc
        return est

    def info(self) -> dict:
        """A JSON-able summary of a fitted adaptor."""
        self._check_fitted()
        n_params = int(sum(np.asarray(v).size for k, v in self.weights_.items() if k != weight_names.ROTATION))
        return {
            "input_dim": self.input_dim_,
            "dims": list(self.dims_),
            "hidden_dim": self.hidden_dim_,
            "depth": self.depth_,
            "rotation": weight_names.ROTATION in self.weights_,
            "trainable_parameters": n_params,
            "supervised": self.supervised_,
            "recipe": self.settings_.recipe,
            "base_model": self.settings_.base_model,
            "fit_summary": self.fit_summary_,
        }


MatryoshkaAdaptor.__doc__ = MatryoshkaAdaptor.__doc__.replace("{params}", _parameters_doc())
