"""The one definition of every fitting hyper-parameter: type, default, meaning and valid range.

``AdaptorConfig`` is a frozen dataclass. Each field declares its default once, a one-line
description and a constraint (modelled on scikit-learn's ``_parameter_constraints``) that is
checked when a config is built, so a bad value fails at once with one line naming the parameter,
the value and the valid range. The estimator's parameters, the training recipes, the trainer and
the command line all read from here.

A recipe is a partial config: a mapping of field names to values applied over the defaults (the
defaults *are* the ``"default"`` recipe). Explicitly given values override the recipe's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from numbers import Integral, Real
from typing import Any

import numpy as np

from .errors import InputError

# --------------------------------------------------------------------------- constraints


class Constraint:
    """A check on one value; ``describe`` is the valid range as shown to a user."""

    def check(self, value: Any) -> Any:  # returns the value, normalised (e.g. int(np.int64(3)))
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class _Bad(Exception):
    """Raised by a constraint; turned into one ``InputError`` line naming the parameter."""


@dataclass(frozen=True)
class Interval(Constraint):
    """A real or integer number in [low, high] (``None``: unbounded; ``open_low``/``open_high``: strict)."""

    kind: type  # int or float
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def check(self, value):
        if isinstance(value, (bool, np.bool_)):
            raise _Bad
        if self.kind is int:
            if not isinstance(value, Integral):
                raise _Bad
            value = int(value)
        else:
            if not isinstance(value, Real):
                raise _Bad
            value = float(value)
            if math.isnan(value) or math.isinf(value):
                raise _Bad
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            raise _Bad
        if self.high is not None and (value > self.high or (self.open_high and value == self.high)):
            raise _Bad
        return value

    def describe(self) -> str:
        name = "an integer" if self.kind is int else "a finite number"
        if self.low is not None and self.high is None:
            return f"{name} {'>' if self.open_low else '>='} {_num(self.low)}"
        if self.high is not None and self.low is None:
            return f"{name} {'<' if self.open_high else '<='} {_num(self.high)}"
        if self.low is None:
            return name
        return (f"{name} in {'(' if self.open_low else '['}{_num(self.low)}, "
                f"{_num(self.high)}{')' if self.open_high else ']'}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class Options(Constraint):
    """One of a fixed set of strings."""

    choices: tuple[str, ...]

    def check(self, value):
        if not isinstance(value, str) or value not in self.choices:
            raise _Bad
        return value

    def describe(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)


class Boolean(Constraint):
    def check(self, value):
        if not isinstance(value, (bool, np.bool_)):
            raise _Bad
        return bool(value)

    def describe(self) -> str:
        return "True or False"


class Text(Constraint):
    def check(self, value):
        if not isinstance(value, str) or not value.strip():
            raise _Bad
        return value

    def describe(self) -> str:
        return "a non-empty string"


class Dims(Constraint):
    """Matryoshka dims: one positive integer or a sequence of them (sorted, de-duplicated).

    Strings, booleans and non-integral numbers are refused rather than converted: ``"64"`` is
    not the dims (6, 4) and ``32.7`` is not 32. The upper bound (the input dimension) is only
    known at ``fit``.
    """

    def check(self, value):
        if isinstance(value, (Integral, np.integer)) and not isinstance(value, (bool, np.bool_)):
            value = (value,)
        if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
            raise _Bad
        values = list(value)
        if not values:
            raise _Bad
        for m in values:
            if isinstance(m, (bool, np.bool_)) or not isinstance(m, Integral) or m < 1:
                raise _Bad
        return tuple(sorted({int(m) for m in values}))

    def describe(self) -> str:
        return "positive integers, e.g. (32, 64, 128)"


@dataclass(frozen=True)
class AnyOf(Constraint):
    """A value that passes one of several constraints (the first that accepts it normalises it)."""

    options: tuple[Constraint, ...]

    def check(self, value):
        for option in self.options:
            try:
                return option.check(value)
            except (_Bad, TypeError, ValueError):
                continue
        raise _Bad

    def describe(self) -> str:
        return " or ".join(o.describe() for o in self.options)


def param(default: Any, constraint: Constraint, doc: str, *, optional: bool = False) -> Any:
    """A config field: its default, its constraint, its documentation; ``optional`` allows None."""
    return field(default=default, metadata={"constraint": constraint, "doc": doc, "optional": optional})


# --------------------------------------------------------------------------------- config

NEIGHBOR_SEARCH = ("auto", "exact", "faiss")
NEIGHBORS_FROM = ("sample", "corpus")
INITS = ("pca", "identity")
LISTWISE_TARGETS = ("auto", "original", "adapted")
RANK_DIM_WEIGHTS = ("uniform", "inv_sqrt")
SUPERVISED_FALLBACKS = ("none", "corpus-only")
RECIPE_NAMES = ("default", "paper")


@dataclass(frozen=True)
class AdaptorConfig:
    """Every setting of a fit, validated at construction (frozen: build a new one to change it).

    The defaults are the ``"default"`` recipe. ``AdaptorConfig.from_recipe("paper", steps=800)``
    applies a recipe and overrides; ``dataclasses.replace(config, lr=1e-4)`` makes a variant.
    ``AdaptorConfig.describe()`` lists every field with its type, default and range.

    Attributes
    ----------
{fields}
    """

    # Architecture and start
    dims: tuple[int, ...] | None = param(None, Dims(), "Matryoshka dims trained jointly (None: 16, 32, ... below d, and d).",
                                         optional=True)
    recipe: str = param("default", Options(RECIPE_NAMES), "Named recipe the other values came from (a record).")
    hidden_dim: int | None = param(None, Interval(int, 1),
                                   "MLP width (None: the width of its input, residual_dims; see "
                                   "default_architecture).", optional=True)
    depth: int = param(2, Interval(int, 1), "Linear layers of the residual MLP (1: a single linear layer).")
    init: str = param("pca", Options(INITS), "Start: 'pca' (uncentred PCA rotation of the corpus) or 'identity'.")
    learn_rotation: bool = param(True, Boolean(),
                                 "Train the rotation too, kept exactly orthogonal (saved as a fixed matrix).")
    rotation_dims: int | None = param(None, Interval(int, 1),
                                      "With learn_rotation, learn the rotation only in the leading this-many PCA "
                                      "coordinates (None: see default_architecture; up to 1,024 input dims all d, "
                                      "or d/2 for a corpus-only fit).", optional=True)
    residual_dims: int | None = param(None, Interval(int, 1),
                                      "The residual MLP reads and writes only the leading this-many rotated "
                                      "coordinates, the others pass through (None: the same block as "
                                      "rotation_dims, see default_architecture).", optional=True)
    # Unsupervised losses (stage 1, and stage 2 next to the ranking loss)
    k: int = param(10, Interval(int, 1), "Neighbours per anchor, mined on the original full-dim vectors.")
    topk_weight: float = param(0.0, Interval(float, 0), "Weight of the paper's top-k similarity loss.")
    alpha: float = param(0.0, Interval(float, 0), "Weight of the pairwise similarity loss.")
    beta: float = param(20.0, Interval(float, 0), "Weight of the reconstruction loss in stage 1.")
    listwise_weight: float = param(1.0, Interval(float, 0), "Weight of the listwise KL distillation term.")
    temperature: float | str = param(
        "auto", AnyOf((Interval(float, 0, open_low=True), Options(("auto",)))),
        "Softmax temperature of the listwise term. 'auto': in fits without labels, scaled to how spread the "
        "model's cosines are, 0.05 * sqrt(s / 0.13) with s the std of cosines between random corpus rows (0.13 "
        "for MiniLM, so ~0.05 there; ~0.02 for e5, whose cosines bunch near 0.83); in supervised fits 0.05 in "
        "both stages (the scaled one cost them; docs/ablations.md, sessions 14-15). The fit records the value "
        "it used.")
    binary_weight: float = param(0.0, Interval(float, 0), "Weight of the quantisation-aware listwise term on the "
                                 "binarised (straight-through sign) prefixes, so a binary first stage keeps the "
                                 "ranking (0 = off; docs/ablations.md).")
    listwise_negatives: int = param(0, Interval(int, 0),
                                    "Random corpus rows added to the listwise pool of every unsupervised step.")
    query_fraction: float = param(0.25, Interval(float, 0, 1),
                                  "Minimum share of query anchors per batch in an unsupervised fit with queries "
                                  "(0: uniform; supervised fits always draw uniformly).")
    queries_as_candidates: bool | str = param(
        "auto", AnyOf((Boolean(), Options(("auto",)))),
        "Query anchors are candidates in every anchor's listwise pool (False: each anchor ranks documents only; "
        "'auto': False in unsupervised fits, True in supervised ones).")
    use_queries: bool | str = param(
        True, AnyOf((Boolean(), Options(("validated",)))),
        "Let the unsupervised losses also see query vectors (no labels). 'validated' (supervised fits): run "
        "stage 1 with and without them (without: at the temperature of a fit without labels) and keep them only "
        "when the held-out labelled queries show them better beyond noise (1.645 standard errors; with query "
        "groups, a sign-flip test over the held-out groups at the same level; fits without held-out queries "
        "use them).")
    # Supervised stage (stage 2)
    gamma: float | str = param(
        1.0, AnyOf((Interval(float, 0), Options(("validated",)))),
        "Weight of the ranking loss. 'validated': stage 2 run once per weight in GAMMA_CANDIDATES (1 and 2) from "
        "the same start and random streams, and the one better on the held-out labelled queries kept (ties: the "
        "first); fits with too few labels to hold any out use the first (docs/ablations.md, session 17). The fit "
        "records the weight it kept.")
    supervised_beta: float = param(1.0, Interval(float, 0), "Weight of the reconstruction loss in stage 2.")
    supervised_temperature: float | None = param(
        None, Interval(float, 0, open_low=True),
        "Softmax temperature of the listwise term in stage 2 (None: the stage-1 temperature).", optional=True)
    supervised_listwise_target: str = param(
        "auto", Options(LISTWISE_TARGETS),
        "Target of the listwise term in stage 2: 'original' (the original vectors' full-dim cosines), "
        "'adapted' (the adapted vectors' own, detached, so the prefixes follow what the labels teach the full "
        "vector), or 'auto': 'adapted' when stage 2 holds labelled queries out (min_validation_queries or "
        "more), which then also check it, else 'original'.")
    rank_dim_weights: str = param(
        "uniform", Options(RANK_DIM_WEIGHTS),
        "Weights of the Matryoshka dims in the ranking loss: 'uniform', or 'inv_sqrt' (proportional to "
        "1/sqrt(m), mean 1), which spends more of the labels on the small prefixes (docs/ablations.md).")
    rank_scale: float = param(20.0, Interval(float, 0, open_low=True),
                              "Multiplies cosine differences inside the ranking loss (1: the paper).")
    random_negatives: int = param(64, Interval(int, 0), "Random corpus rows in each supervised batch.")
    hard_negatives: int = param(16, Interval(int, 0),
                                "Per labelled query, its top full-dim corpus neighbours added to the batch.")
    dynamic_negatives: int = param(16, Interval(int, 0),
                                   "Per labelled query, its top rows in the current adapted space, re-mined every "
                                   "eval_every steps (0: off).")
    max_positives: int = param(8, Interval(int, 1), "Positives sampled per query and batch (bounds the pair tensor).")
    # Optimisation
    steps: int = param(400, Interval(int, 0), "Steps of stage 1.")
    supervised_steps: int = param(1000, Interval(int, 0), "Maximum steps of stage 2 (early stopping may end sooner).")
    supervised_steps_per_query: float | None = param(
        None, Interval(float, 0, open_low=True),
        "Cap stage 2 at this many steps per labelled training query (few labels: fewer steps, so the fit stays "
        "near the unsupervised start; None: supervised_steps only).", optional=True)
    supervised_shrink: float | str = param(
        "auto", AnyOf((Interval(float, 0, 1), Options(("validated", "auto")))),
        "Keep theta1 + shrink * (theta2 - theta1), theta1/theta2 the weights after stage 1/2 (1: stage 2 as "
        "trained; 'validated': chosen from 0, 0.25, ..., 1 on the held-out labelled queries; 'auto': 1 only when "
        "the held-out labelled queries show it better than 0.5 by more than 1.645 standard errors of their paired "
        "gain (with query groups: a sign-flip test over the held-out groups), else 0.5, and 0.5 when too few "
        "queries are labelled to hold any out; see min_validation_queries; "
        "with supervised_fallback='corpus-only' and held-out queries: as 'validated', the fallback being the guard).")
    supervised_fallback: str = param(
        "none", Options(SUPERVISED_FALLBACKS),
        "'corpus-only': a supervised fit that holds labelled queries out also makes the corpus-only adaptor "
        "(exactly what a fit of the corpus alone with the same seed makes) and returns that one unless the "
        "held-out queries show the supervised adaptor better beyond noise (paired nDCG@10 gain, mean over "
        "the dims, > 1.645 standard errors) and worse beyond noise at none of the dims (no dim's gain below "
        "-1.645 of its standard errors; with query groups, a sign-flip test over the held-out groups at the same "
        "level, so fewer than five held-out groups never show a gain); the held-out queries "
        "are then kept out of the query anchors, so "
        "that neither fit has seen them, and supervised_shrink='auto' keeps the best shrink on them. Fits "
        "without held-out queries keep the supervised one. 'none': always the supervised one.")
    batch_size: int = param(128, Interval(int, 1), "Anchors (and labelled queries) per step.")
    lr: float = param(1e-3, Interval(float, 0, 1e6, open_low=True),
                      "Adam learning rate (the divergence guard catches values that are too high).")
    weight_decay: float = param(0.0, Interval(float, 0), "Adam weight decay.")
    ema_decay: float = param(0.0, Interval(float, 0, 1, open_high=True),
                             "Exponential moving average of the weights (0: off); the averaged weights are kept.")
    # Validation, early stopping and the divergence guard
    validation_fraction: float = param(0.1, Interval(float, 0, 1, open_high=True),
                                       "Share of anchors / labelled queries held out for validation.")
    max_validation_anchors: int = param(512, Interval(int, 1), "Cap on held-out anchors in stage 1.")
    max_validation_queries: int = param(1000, Interval(int, 1), "Cap on held-out labelled queries in stage 2.")
    min_validation_queries: int = param(
        20, Interval(int, 1),
        "Hold labelled queries out for early stopping (and the validated shrink) only when at least this many "
        "would be held out (from ~195 labelled queries at validation_fraction 0.1); fewer: stage 2 trains on "
        "all of them for all its steps, since a holdout of 2-19 queries chooses a step by noise.")
    eval_every: int = param(100, Interval(int, 1), "Steps between validations.")
    patience: int = param(5, Interval(int, 1), "Validations without improvement before stage 2 stops.")
    min_improvement: float = param(1e-5, Interval(float, 0), "Smallest validation gain that counts as better.")
    collapse_fraction: float = param(0.5, Interval(float, 0, 1, open_high=True),
                                     "Divergence guard: stop, restore the best weights and warn when the validation "
                                     "score falls below this share of its starting value (0: off; non-finite loss or "
                                     "weights always stop).")
    # Data and runtime
    max_fit_vectors: int = param(50_000, Interval(int, 2), "Corpus rows sampled for fitting.")
    neighbor_search: str = param("auto", Options(NEIGHBOR_SEARCH), "Neighbour mining: 'auto', 'exact' or 'faiss'.")
    neighbors_from: str = param("sample", Options(NEIGHBORS_FROM),
                                "When the corpus is sampled (above max_fit_vectors), mine the sampled anchors' "
                                "neighbours in the 'sample' or in the whole 'corpus' (streamed block by block; "
                                "the neighbour rows found are added to the training rows).")
    seed: int = param(0, Interval(int, 0), "Seed of every random choice of the fit.")
    device: str = param("auto", Text(), "'auto' (a GPU when there is one), 'cpu', 'cuda', 'cuda:1', ...")
    progress: bool = param(True, Boolean(), "Show progress bars.")
    base_model: str | None = param(None, Text(), "Name of the embedding model, stored with the adaptor.",
                                   optional=True)

    def __post_init__(self):
        for f in fields(self):
            object.__setattr__(self, f.name, check_param(f.name, getattr(self, f.name)))

    @classmethod
    def from_recipe(cls, recipe: str = "default", **overrides) -> AdaptorConfig:
        """The recipe's values over the defaults, then ``overrides`` (``None`` values are ignored)."""
        check_param("recipe", recipe)
        unknown = sorted(set(overrides) - set(FIELDS))
        if unknown:
            raise InputError(f"unknown parameter {unknown[0]!r}; valid parameters: {', '.join(FIELDS)}.")
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{**RECIPES[recipe], **given, "recipe": recipe})

    def replace(self, **changes) -> AdaptorConfig:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-able values (dims as a list)."""
        out = dataclasses.asdict(self)
        if out["dims"] is not None:
            out["dims"] = list(out["dims"])
        return out

    @classmethod
    def describe(cls) -> str:
        """One line per field: name, default, valid range and meaning (used by ``fit --help``)."""
        lines = []
        for name, f in FIELDS.items():
            rng = f.metadata["constraint"].describe() + (" or None" if f.metadata["optional"] else "")
            lines.append(f"{name} = {f.default!r}: {f.metadata['doc']} ({rng})")
        return "\n".join(lines)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in fields(AdaptorConfig)}


def _field_doc(name: str, f: dataclasses.Field, default: str) -> str:
    rng = f.metadata["constraint"].describe() + (" or None" if f.metadata["optional"] else "")
    return f"    {name} : {f.type}, {default}\n        {f.metadata['doc']} Valid: {rng}."


AdaptorConfig.__doc__ = AdaptorConfig.__doc__.replace(
    "{fields}", "\n".join(_field_doc(n, f, f"default {f.default!r}") for n, f in FIELDS.items()))


def check_param(name: str, value: Any) -> Any:
    """Check one parameter against its field's constraint; return it normalised."""
    f = FIELDS.get(name)
    if f is None:
        raise InputError(f"unknown parameter {name!r}; valid parameters: {', '.join(FIELDS)}.")
    if value is None and f.metadata["optional"]:
        return None
    constraint = f.metadata["constraint"]
    try:
        return constraint.check(value)
    except (_Bad, TypeError, ValueError):
        allowed = constraint.describe() + (" or None" if f.metadata["optional"] else "")
        raise InputError(f"{name}={value!r} is not valid: {name} must be {allowed}.") from None


def resolve_queries_as_candidates(value: bool | str, supervised: bool) -> bool:
    """``queries_as_candidates`` for one fit: ``"auto"`` is False without labels, True with them.

    Models with query / passage prefixes put a query nearer other queries than its documents, so in an
    unsupervised fit a query anchor ranks documents only; supervised fits, where the mask was mixed,
    keep the candidates (docs/ablations.md, sessions 7 and 8).
    """
    return supervised if value == "auto" else bool(value)


# temperature="auto": the listwise temperature chosen on all-MiniLM-L6-v2 (kept for supervised fits, scaled
# for fits without labels) and the std of that model's cosines between random SciFact documents; the
# square root is the dev splits' choice between a fixed temperature and one fully proportional to the
# spread (docs/ablations.md, session 14).
REFERENCE_TEMPERATURE = 0.05
REFERENCE_COSINE_STD = 0.13


def auto_temperature(sample: np.ndarray, seed: int, *, rows: int = 1000) -> float:
    """``REFERENCE_TEMPERATURE * sqrt(s / REFERENCE_COSINE_STD)``, ``s`` the std of the cosines between
    up to ``rows`` random unit rows of ``sample`` and up to ``rows`` others (own stream: the fit's
    random draws are the same as with a fixed temperature)."""
    rng = np.random.default_rng(seed)
    a = sample[rng.choice(len(sample), min(rows, len(sample)), replace=False)]
    b = sample[rng.choice(len(sample), min(rows, len(sample)), replace=False)]
    spread = float(np.std(a @ b.T))
    return REFERENCE_TEMPERATURE * float(np.sqrt(max(spread, 1e-6) / REFERENCE_COSINE_STD))


def resolve_temperature(value: float | str, sample: np.ndarray, seed: int, supervised: bool) -> float:
    """``temperature`` for one fit: ``"auto"`` is :func:`auto_temperature` of the fit's unit rows without
    labels and ``REFERENCE_TEMPERATURE`` with them (the scaled one made e5's supervised stage diverge and
    its stage-1 start a worse one for stage 2; docs/ablations.md, session 15). A number is kept."""
    if value != "auto":
        return value
    return REFERENCE_TEMPERATURE if supervised else round(auto_temperature(sample, seed), 6)


# gamma="validated": the ranking weights stage 2 is run with, the default first (kept on ties and when
# no labelled queries are held out); 2 was ahead on MiniLM SciFact dev and behind on e5 SciFact dev, so
# the choice is the held-out queries' (docs/ablations.md, sessions 16-17).
GAMMA_CANDIDATES = (1.0, 2.0)

DEFAULTS = AdaptorConfig()

# Recipes: partial configs over the defaults (which are the "default" recipe, chosen on a SciFact
# dev split carved from the train queries; docs/ablations.md). "paper" is Yoon et al. (2024) as
# written: identity start, L1 similarity losses (top-k, pairwise, reconstruction), logistic ranking
# loss on raw cosines, no listwise term, no learned rotation, no mined negatives.
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "paper": dict(init="identity", topk_weight=1.0, alpha=1.0, beta=1.0, supervised_beta=1.0, gamma=1.0,
                  listwise_weight=0.0, rank_scale=1.0, steps=1500, supervised_steps=1000, hard_negatives=0,
                  learn_rotation=False, listwise_negatives=0, query_fraction=0.0, ema_decay=0.0,
                  dynamic_negatives=0, supervised_shrink=1.0),
}
assert set(RECIPES) == set(RECIPE_NAMES)
for _recipe in RECIPES.values():  # a recipe with a bad value fails at import, not in a user's fit
    AdaptorConfig(**_recipe)


def default_dims(input_dim: int) -> tuple[int, ...]:
    """Powers of two from 16 below the input dim, plus the input dim itself."""
    dims, m = [], 16
    while m < input_dim:
        dims.append(m)
        m *= 2
    return tuple(dims + [input_dim])


# Inputs wider than this use the large-input choices (768- and 1,024-dim models keep the defaults
# the quality results in docs/results.md were measured with): the PCA start from the d x d Gram
# matrix (pca.pca_rotation), the rotation and residual MLP learned in the leading PCA dims only, and
# neighbours mined on the leading PCA coordinates then re-ranked exactly (neighbors.prefix_rerank_topk).
# Measured in docs/performance.md ("High-dimensional inputs").
LARGE_INPUT_DIM = 1024


def default_architecture(d: int, dims: tuple[int, ...], *, corpus_only: bool,
                         pca_start: bool = True) -> tuple[int, int | None, int | None]:
    """(hidden width, learned rotation dims, residual dims) for input dim ``d``.

    Above ``LARGE_INPUT_DIM`` (every fit): the rotation is learned and the residual MLP acts only in
    the leading ``r`` PCA coordinates, r the largest trained dim up to d/4, with hidden width r (3,072
    with the default dims: r = 512), so a step costs what a 512-dim fit costs.

    Up to it: a corpus-only fit (no query vectors, no labels) from the PCA start acts in the leading
    half of the PCA coordinates only (r = d // 2, hidden width r), and the trailing half keeps its PCA
    values: with only document-document structure to learn from, moving all d coordinates cost the
    longer prefixes up to 0.011 below PCA on dev (docs/ablations.md, session 10). A fit with query
    vectors (unlabelled or labelled), or one from the identity start (the paper's recipe), acts on all
    d coordinates: (d, None, None).

    Wherever r < d, the other d - r coordinates keep their PCA values. Explicit ``hidden_dim`` /
    ``rotation_dims`` / ``residual_dims`` take precedence.
    """
    if d <= LARGE_INPUT_DIM:
        if not corpus_only or not pca_start or d < 2:
            return d, None, None
        half = d // 2
        return half, half, half
    quarter = d // 4
    small = [m for m in dims if m <= quarter]
    r = max(small) if small else quarter
    return r, r, r
