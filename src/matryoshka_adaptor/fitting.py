"""The fit pipeline, one function per job: check inputs, sample, PCA start, mine neighbours,
assemble the training data, train. ``MatryoshkaAdaptor.fit`` resolves its config and calls
:func:`fit_adaptor`; torch is imported only here (and below), never by ``transform``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .config import AdaptorConfig, default_architecture, default_dims, resolve_temperature
from .errors import InputError
from .neighbors import TrainingNeighbors, mine_training_neighbors
from .pca import pca_rotation
from .validation import check_dims, check_embeddings, check_ids, check_qrels, check_query_groups, l2_normalize

# Rows cast to float32 at a time when sampling: a non-float32 (memory-mapped) corpus is never
# converted whole.
SAMPLE_CHUNK_ROWS = 16384


@dataclass
class FitInputs:
    """Checked fit inputs.

    Attributes
    ----------
    corpus : ndarray of shape (n, d)
        As given (a memory map stays one, whatever its dtype).
    queries : ndarray of shape (q, d) float32 or None
    corpus_ids : list of str
    positives : list of list of (str, float) or None
        Per query, its (document id, grade > 0) judgements (supervised fits only).
    dims : tuple of int
        The Matryoshka dims, checked against the input dimension.
    query_groups : ndarray of shape (q,) int64 or None
        Per query, its group's code: held-out labelled queries are drawn as whole groups.
    """

    corpus: np.ndarray
    queries: np.ndarray | None
    corpus_ids: list[str]
    positives: list[list[tuple[str, float]]] | None
    dims: tuple[int, ...]
    query_groups: np.ndarray | None = None

    @property
    def supervised(self) -> bool:
        return self.positives is not None


@dataclass
class FitResult:
    """What a fit produced: the weights (numpy) and the record of how."""

    weights: dict[str, np.ndarray]
    input_dim: int
    dims: tuple[int, ...]
    hidden_dim: int
    settings: AdaptorConfig
    history: dict
    summary: dict


def check_corpus(corpus) -> np.ndarray:
    """``check_embeddings`` without its float32 copy of the whole corpus (only the sample is cast)."""
    if isinstance(corpus, np.ndarray) and corpus.ndim == 2 and corpus.dtype != np.float32:
        check_embeddings(corpus[:1], name="corpus")  # the same shape and dtype checks on one row
        return corpus
    return check_embeddings(corpus, name="corpus")


def check_fit_inputs(
    corpus,
    queries,
    qrels: Mapping[str, Mapping[str, float]] | None,
    corpus_ids: Sequence[str] | None,
    query_ids: Sequence[str] | None,
    dims: Sequence[int] | None,
    query_groups: Sequence[str | int] | None = None,
) -> FitInputs:
    """Validate everything ``fit`` was given, before any expensive work."""
    corpus = check_corpus(corpus)
    n, d = corpus.shape
    dims = check_dims(dims if dims is not None else default_dims(d), d)
    if queries is not None:
        queries = check_embeddings(queries, name="queries")
        if queries.shape[1] != d:
            raise InputError(
                f"queries have dimension {queries.shape[1]} but the corpus has {d}; embed both with the same model."
            )
    if qrels is not None and queries is None:
        raise InputError("qrels were given without queries; pass the query vectors as well (queries=...).")
    if n < 2:
        raise InputError("the corpus needs at least 2 vectors to mine neighbours for training.")
    if query_groups is not None and qrels is None:
        raise InputError("query_groups were given without qrels; they choose which labelled queries a supervised "
                         "fit holds out, so pass qrels as well (or drop query_groups).")
    cids = check_ids(corpus_ids, n, name="corpus_ids")
    positives = groups = None
    if qrels is not None:
        qids = check_ids(query_ids, len(queries), name="query_ids")
        clean = check_qrels(qrels, qids, cids)
        positives = [[(doc, g) for doc, g in clean.get(q, {}).items() if g > 0] for q in qids]
        if query_groups is not None:
            groups = check_query_groups(query_groups, len(queries))
    return FitInputs(corpus, queries, cids, positives, dims, groups)


def sample_rows(n: int, max_rows: int, rng: np.random.Generator, keep: np.ndarray | None = None) -> np.ndarray:
    """Sorted row numbers: all ``n`` rows, or ``max_rows`` drawn at random plus every row in ``keep``."""
    if n <= max_rows:
        return np.arange(n)
    rows = rng.choice(n, size=max_rows, replace=False)
    if keep is not None and len(keep):
        rows = np.union1d(rows, keep)
    return np.sort(rows)


def gather_unit_rows(x: np.ndarray, rows: np.ndarray, *, chunk_rows: int = SAMPLE_CHUNK_ROWS) -> np.ndarray:
    """``x[rows]`` as float32 unit vectors, read and cast ``chunk_rows`` rows at a time."""
    out = np.empty((len(rows), x.shape[1]), dtype=np.float32)
    for s in range(0, len(rows), chunk_rows):
        chunk = np.asarray(x[rows[s : s + chunk_rows]], dtype=np.float32)
        out[s : s + len(chunk)] = l2_normalize(chunk, name="corpus", offset=s)
    return out


def labelled_rows(inputs: FitInputs) -> np.ndarray | None:
    """Corpus rows judged relevant to some query (kept in every sample)."""
    if inputs.positives is None:
        return None
    pos_of = {c: i for i, c in enumerate(inputs.corpus_ids)}
    labeled = {pos_of[doc] for plist in inputs.positives for doc, _ in plist}
    return np.fromiter(labeled, dtype=np.int64)


def assemble_training_data(inputs: FitInputs, rows: np.ndarray, queries: np.ndarray | None, nb: TrainingNeighbors):
    """The ``TrainingData`` of a fit: training rows (the sample, then any neighbour rows from the
    whole corpus), anchors and neighbours, and (supervised) the queries' judgements as sample rows."""
    from .nn.training import TrainingData

    positives = None
    if inputs.positives is not None:
        row_of = {inputs.corpus_ids[r]: i for i, r in enumerate(rows)}
        positives = [[(row_of[doc], g) for doc, g in plist] for plist in inputs.positives]
    return TrainingData(nb.corpus, nb.anchors, nb.indices, nb.scores, nb.n_corpus_anchors,
                        queries=queries if positives is not None else None, positives=positives,
                        hard_negatives=nb.hard_negatives, query_groups=inputs.query_groups)


def rotate_rows(x: np.ndarray | None, rotation: np.ndarray, *, chunk_rows: int = SAMPLE_CHUNK_ROWS) -> np.ndarray | None:
    """``x @ rotation`` in float32, ``chunk_rows`` rows at a time (None stays None)."""
    if x is None:
        return None
    out = np.empty((len(x), rotation.shape[1]), dtype=np.float32)
    for s in range(0, len(x), chunk_rows):
        np.matmul(x[s : s + chunk_rows], rotation, out=out[s : s + chunk_rows])
    return out


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def fit_adaptor(inputs: FitInputs, config: AdaptorConfig) -> FitResult:
    """Run the whole fit on checked inputs: sample -> PCA start -> neighbours -> train (-> fallback)."""
    started = time.perf_counter()
    result, trainer = train_adaptor(inputs, config)
    if inputs.supervised and config.supervised_fallback == "corpus-only":
        result = fall_back_to_corpus_only(inputs, config, result, trainer)
        result.summary["total_seconds"] = round(time.perf_counter() - started, 3)
    return result


def fall_back_to_corpus_only(inputs: FitInputs, config: AdaptorConfig, supervised: FitResult, trainer) -> FitResult:
    """``supervised_fallback="corpus-only"``: the supervised result, or the corpus-only adaptor.

    The corpus-only adaptor is the fit of ``inputs.corpus`` alone with ``config`` (what a user without
    labels or queries gets, bit for bit). Both are scored on the supervised fit's held-out labelled
    queries (nDCG@10 per query and dim, the rows stage 2 ranks), and the supervised one is kept only
    when its paired gain, mean over the dims, exceeds ``Trainer.EVIDENCE_Z`` standard errors (the rule
    of the shrink) *and* no dim of the fit loses beyond that many standard errors: the promise is
    "never below the adaptor you would have without labels" at every prefix you asked for, so a large
    gain at long prefixes does not buy a clear loss at a short one (narrow ``dims`` to the prefixes
    you serve if only some matter). Those queries also chose stage 2's stopping step and shrink, so
    the supervised score is if anything optimistic: the rule asks for a clear margin. Without held-out
    queries there is no evidence either way, and the supervised result stays, as without the option.
    """
    val_q = trainer.labelled_split()[1]
    if not len(val_q):
        supervised.summary["supervised"]["fallback"] = {"kept": "supervised", "held_out_queries": 0}
        return supervised
    corpus_only, _ = train_adaptor(dataclasses.replace(inputs, queries=None, positives=None, query_groups=None),
                                   config)
    score_supervised = trainer.query_ndcg(val_q)
    per_dim_and_query = trainer.last_val_by_dim_and_query
    score_corpus_only = trainer.query_ndcg_of_weights(corpus_only.weights, val_q)
    choice = {"val_ndcg@10_supervised": score_supervised, "val_ndcg@10_corpus_only": score_corpus_only,
              **fallback_choice(per_dim_and_query - trainer.last_val_by_dim_and_query, trainer.dims,
                                trainer.EVIDENCE_Z, trainer.groups_of(val_q))}
    if choice["kept"] == "supervised":
        supervised.summary["supervised"]["fallback"] = choice
        return supervised
    # The weights, architecture and settings are the corpus-only fit's; the summary keeps the record
    # of the supervised fit it replaced.
    summary = {**corpus_only.summary, "supervised": {**supervised.summary["supervised"], "fallback": choice}}
    history = {**corpus_only.history, "supervised": supervised.history.get("supervised", [])}
    return dataclasses.replace(corpus_only, history=history, summary=summary)


def fallback_choice(gain: np.ndarray, dims, z: float, groups: np.ndarray | None = None) -> dict:
    """The fallback's rule on the supervised adaptor's paired gains over the corpus-only one.

    ``gain``: (dims, held-out queries) nDCG@10 differences; ``groups``: the held-out queries'
    ``query_groups`` labels, or None. The supervised adaptor is kept when the gain's mean over the
    dims exceeds ``z`` standard errors and no dim's gain is below ``-z`` of its own standard errors
    (with groups: the same tests over groups, see ``paired_evidence``); the record says which held
    and why.
    """
    from .nn.training import paired_evidence

    evidence = paired_evidence(gain.mean(axis=0), z, groups)
    by_dim = {int(m): paired_evidence(g, z, groups) for m, g in zip(dims, gain)}
    losing_dims = [m for m, e in by_dim.items()
                   if e.get("loss_beyond_noise", e["gain"] < -z * e["standard_error"])]
    mean_beyond_noise = evidence.pop("beyond_noise")
    return {**evidence, "mean_gain_beyond_noise": mean_beyond_noise,
            "kept": "supervised" if mean_beyond_noise and not losing_dims else "corpus-only",
            "gain_by_dim": {m: e["gain"] for m, e in by_dim.items()},
            "standard_error_by_dim": {m: e["standard_error"] for m, e in by_dim.items()},
            "losing_dims": losing_dims}


def train_adaptor(inputs: FitInputs, config: AdaptorConfig):
    """The fit itself: (``FitResult``, the ``Trainer`` that made it, for checks on its held-out queries)."""
    import torch

    from .nn.module import AdaptorNet
    from .nn.training import Trainer, stage_weights

    started = time.perf_counter()
    if inputs.supervised:
        # A raised query share made a worse start for the supervised stage (docs/ablations.md):
        # it applies to fits without labels only, and the recorded settings say what ran.
        config = config.replace(query_fraction=0.0)
    config = config.replace(dims=inputs.dims)
    n, d = inputs.corpus.shape
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)

    rows = sample_rows(n, config.max_fit_vectors, rng, keep=labelled_rows(inputs))
    sample = gather_unit_rows(inputs.corpus, rows)
    queries = l2_normalize(inputs.queries, name="queries") if inputs.queries is not None else None
    rotation = pca_rotation(sample, rng) if config.init == "pca" else None
    # resolved on the sample before any rotation (the Trainer would resolve it on its training rows)
    # use_queries="validated" also runs stage 1 without query anchors: at the temperature of a fit without labels
    corpus_only_temperature = (resolve_temperature(config.temperature, sample, config.seed, False)
                               if inputs.supervised and config.use_queries == "validated" else None)
    config = config.replace(temperature=resolve_temperature(config.temperature, sample, config.seed,
                                                            inputs.supervised))

    device = resolve_device(config.device)
    # Corpus only: no labels, and no query vectors as anchors.
    corpus_only = not inputs.supervised and (inputs.queries is None or not config.use_queries)
    auto_hidden, auto_rotation_dims, auto_residual_dims = default_architecture(
        d, inputs.dims, corpus_only=corpus_only, pca_start=config.init == "pca")
    rotation_dims = config.rotation_dims or auto_rotation_dims
    residual_dims = config.residual_dims or auto_residual_dims
    hidden = config.hidden_dim or (config.residual_dims or auto_hidden)
    # A fixed part of the rotation (not learned, or learned only in a leading block) is applied to
    # the training rows once here instead of at every step; cosines do not change, so mining may
    # run on the rotated rows, whose leading PCA coordinates make a cheap first pass.
    fixed_start = rotation is not None and (not config.learn_rotation or (rotation_dims or d) < d)
    # A sampled corpus with neighbors_from="corpus": the sample's neighbours come from every row.
    whole_corpus = inputs.corpus if config.neighbors_from == "corpus" and len(rows) < n else None
    rotate_first = fixed_start and whole_corpus is None
    if rotate_first:
        sample, queries = rotate_rows(sample, rotation), rotate_rows(queries, rotation)
    nb = mine_training_neighbors(
        sample, queries, min(config.k, len(sample) - 1), use_queries=bool(config.use_queries),
        hard_negatives=config.hard_negatives if inputs.supervised else 0, method=config.neighbor_search,
        progress=config.progress, seed=config.seed, device=device, whole_corpus=whole_corpus,
        sample_rows=rows, pca_ordered=rotate_first)
    data = assemble_training_data(inputs, rows, queries, nb)
    if fixed_start and not rotate_first:
        # The leading anchors are the table's first rows (the sample): rotated once, with the table.
        corpus_rot, n = rotate_rows(data.corpus, rotation), data.n_corpus_anchors
        data = dataclasses.replace(
            data, corpus=corpus_rot, queries=rotate_rows(data.queries, rotation),
            anchors=np.concatenate([corpus_rot[:n], rotate_rows(data.anchors[n:], rotation)]))
    mining_seconds = time.perf_counter() - started

    net = AdaptorNet(d, hidden, config.depth, None if rotation is None else torch.from_numpy(rotation),
                     learn_rotation=config.learn_rotation, rotation_dims=rotation_dims,
                     residual_dims=residual_dims, prerotated=fixed_start)
    trainer = Trainer(net, inputs.dims, config, data, device=device, corpus_only_temperature=corpus_only_temperature)
    stage1 = trainer.fit_stage_one()
    history = {"unsupervised": stage1.history}
    summary = {"unsupervised": {"steps_run": stage1.steps_run, "val_neighbor_recall_start": stage1.initial_score,
                                "val_neighbor_recall_end": stage1.history[-1]["val"] if stage1.history else None}}
    if stage1.query_choice is not None:
        summary["unsupervised"]["queries"] = stage1.query_choice
    if stage1.diverged:
        summary["unsupervised"]["diverged"] = stage1.diverged
    if inputs.supervised:
        stage2 = trainer.fit_supervised()
        history["supervised"] = stage2.history
        summary["supervised"] = {"steps_run": stage2.steps_run, "best_step": stage2.best_step,
                                 "best_val_ndcg@10": stage2.best_score, "shrink": stage2.shrink,
                                 "gamma": trainer.config.gamma,
                                 "held_out_queries": int(len(trainer.labelled_split()[1])),
                                 "listwise_target": (trainer.stage_two_listwise_target()
                                                     if stage_weights(trainer.config, 2)["listwise"] else None),
                                 "start_val_ndcg@10_by_dim": stage2.initial_by_dim}
        if inputs.query_groups is not None:
            summary["supervised"]["held_out_groups"] = int(len(np.unique(trainer.groups_of(trainer.labelled_split()[1]))))
        if stage2.shrink_evidence is not None:
            summary["supervised"]["shrink_evidence"] = stage2.shrink_evidence
        if stage2.shrink_scores is not None:
            summary["supervised"]["shrink_scores"] = stage2.shrink_scores
        if stage2.gamma_choice is not None:
            summary["supervised"]["gamma_choice"] = stage2.gamma_choice
        if stage2.diverged:
            summary["supervised"]["diverged"] = stage2.diverged

    weights = {k: v.numpy() for k, v in net.cpu().export_weights().items()}
    summary.update({
        "n_corpus": n,
        "n_fit_vectors": len(nb.corpus),  # the sample plus any neighbour rows from the whole corpus
        "n_queries": 0 if inputs.queries is None else len(inputs.queries),
        "architecture": {"hidden_dim": hidden, "rotation_dims": rotation_dims or d, "residual_dims": residual_dims or d},
        "neighbor_search": nb.method,
        "neighbor_recall": nb.recall_at_k,
        "mining_seconds": round(mining_seconds, 3),
        "total_seconds": round(time.perf_counter() - started, 3),
        "device": device,
    })
    # the trainer's config: its "auto" settings resolved for this fit, as the recorded settings should be
    return FitResult(weights, d, inputs.dims, hidden, trainer.config, history, summary), trainer
