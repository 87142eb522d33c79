"""The benchmark: nDCG@10 (and Recall@100, MRR@10) against dimension, per method, over seeds."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .._version import __version__
from ..embed.sources import SentenceTransformerSource, default_cache_path, load_precomputed, make_source
from ..errors import InputError
from ..formats import read_query_groups
from ..validation import check_dims, l2_normalize
from .datasets import BeirDataset, resolve_dataset
from .label_curve import check_label_counts, subset_fit_data
from .methods import FitData, make_method
from .metrics import evaluate_run
from .retrieval import retrieve, run_from_ranking
from ..quantization import QuantizedVectors, bytes_per_vector, check_precision, funnel_search


@dataclass
class BenchmarkConfig:
    dataset: str
    model: str | None = None
    embeddings: str | None = None  # folder with corpus.npy, queries.npy, ids.json
    embeddings_name: str | None = None  # <dataset>/embeddings/<name>/, else looked up in sibling datasets'
    provider: str = "sentence-transformers"  # with model: any local source of embed.sources.make_source
    dims: tuple[int, ...] = (16, 32, 64, 128, 256)
    methods: tuple[str, ...] = ("truncate", "pca", "adaptor", "adaptor-supervised")
    seeds: tuple[int, ...] = (0,)
    method_seeds: dict = field(default_factory=dict)  # method name -> its own seeds (fewer for costly fits)
    split: str = "test"
    train_split: str = "train"
    top_k: int = 100
    cache: str | None = None
    adaptor_params: dict = field(default_factory=dict)
    # Equal-bytes evaluation (empty: off): precisions of the first stage, shortlist sizes rescored
    # with full float32 vectors (0: no rescoring), and the prefix dims to evaluate (None: dims + d).
    quantize: tuple[str, ...] = ()
    rescore: tuple[int, ...] = (0,)
    quantize_dims: tuple[int, ...] | None = None
    store: str = "numpy"  # where the funnel runs: numpy (in memory) or lancedb (a table per configuration)
    # Label-efficiency curve (empty: off): label counts (ints, "all"); the methods that train on
    # queries are fitted per (count, seed) on a seeded random subset of the labelled train queries.
    labels: tuple = ()
    # TSV of query-id, group for the train queries (``{dataset}``: each dataset folder's name): the
    # supervised fits then hold out whole groups (MatryoshkaAdaptor.fit's query_groups).
    query_groups: str | None = None


# Methods fitted on training-split queries (and, for the supervised ones, their qrels).
TRAIN_QUERY_METHODS = ("adaptor-supervised", "adaptor-queries", "adaptor-paper-supervised")


def _versions() -> dict:
    out = {"matryoshka-adaptor": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "torch", "pytrec-eval-terrier", "sentence-transformers", "faiss-cpu"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def machine_description() -> dict:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem_gib, "gpu": gpu, "platform": platform.platform()}


def _vectors(ds: BeirDataset, cfg: BenchmarkConfig, query_ids: list[str]):
    """Corpus and query vectors, in dataset order, from precomputed files or a (cached) model."""
    if cfg.embeddings:
        pre = load_precomputed(cfg.embeddings)
        pos_c = {c: i for i, c in enumerate(pre.corpus_ids)}
        pos_q = {q: i for i, q in enumerate(pre.query_ids)}
        missing = [c for c in ds.corpus_ids if c not in pos_c][:1] + [q for q in query_ids if q not in pos_q][:1]
        if missing:
            raise InputError(f"precomputed embeddings in {cfg.embeddings} have no vector for id {missing[0]!r}.")
        return pre.corpus[[pos_c[c] for c in ds.corpus_ids]], pre.queries[[pos_q[q] for q in query_ids]]
    if cfg.embeddings_name:
        from .dataset_vectors import find_vectors

        return find_vectors(ds.path, cfg.embeddings_name, ds.corpus_ids, query_ids)
    if not cfg.model:
        raise InputError("give --model NAME_OR_PATH (sentence-transformers) or --embeddings FOLDER.")
    cache = cfg.cache or default_cache_path()
    if cfg.provider == "sentence-transformers":  # as before: no input-type prefix, same cache keys
        doc_src = query_src = SentenceTransformerSource(cfg.model, cache_path=cache)
    else:
        doc_src = make_source(cfg.provider, cfg.model, cache_path=cache, input_type="document")
        query_src = make_source(cfg.provider, cfg.model, cache_path=cache, input_type="query")
    corpus = doc_src.encode(ds.doc_texts(), desc="encoding corpus")
    queries = query_src.encode([ds.queries[q] for q in query_ids], desc="encoding queries")
    return corpus, queries


def train_query_groups(cfg: BenchmarkConfig, dataset: str | Path, train_ids: list[str]) -> list[str] | None:
    """The group of every train query from ``cfg.query_groups`` (None when unset); a query without one fails."""
    if cfg.query_groups is None:
        return None
    if not any("supervised" in m for m in cfg.methods):
        raise InputError("--query-groups shapes the holdout of supervised fits; add adaptor-supervised to --methods "
                         "or drop --query-groups.")
    if not train_ids:
        return None
    path = Path(cfg.query_groups.replace("{dataset}", Path(dataset).name))
    if not path.is_file():
        raise InputError(f"--query-groups {path} is not a file; give a TSV of query-id, group "
                         "('{dataset}' in the path stands for each dataset folder's name).")
    return read_query_groups(path, train_ids, what="train queries")


def run_benchmark(cfg: BenchmarkConfig, *, progress: bool = True, method_factory=None) -> dict:
    """``method_factory(name) -> Method`` replaces ``make_method`` (e.g. methods fitted on another dataset)."""
    make = method_factory or make_method
    ds = resolve_dataset(cfg.dataset)
    test_queries = ds.split_queries(cfg.split)
    needs_train = any(m in TRAIN_QUERY_METHODS for m in cfg.methods)
    if cfg.labels and not needs_train:
        raise InputError(f"--labels needs a method trained on queries among --methods ({', '.join(TRAIN_QUERY_METHODS)}).")
    train_queries = ds.split_queries(cfg.train_split) if needs_train else {}
    if cfg.labels:  # before encoding anything
        check_label_counts(cfg.labels, list(train_queries), ds.qrels[cfg.train_split])
    groups = train_query_groups(cfg, cfg.dataset, list(train_queries))  # before encoding anything
    overlap = set(train_queries) & set(test_queries)
    if overlap:
        raise InputError(f"{len(overlap)} queries are in both {cfg.train_split} and {cfg.split}; refusing to train on test.")
    query_ids = list(test_queries) + list(train_queries)
    corpus, queries = _vectors(ds, cfg, query_ids)
    d = corpus.shape[1]
    dims = check_dims(cfg.dims, d)
    q_test, q_train = queries[: len(test_queries)], queries[len(test_queries) :]
    test_ids = list(test_queries)
    fit_data = FitData(corpus, ds.corpus_ids, q_train if len(q_train) else None,
                       list(train_queries) or None, {q: ds.qrels[cfg.train_split][q] for q in train_queries} or None,
                       groups)
    qrels = {q: ds.qrels[cfg.split][q] for q in test_ids}

    if cfg.quantize:
        for p in cfg.quantize:
            check_precision(p)
        if any(s_ < 0 for s_ in cfg.rescore):
            raise InputError(f"--rescore sizes must be >= 0 (0: no rescoring); got {list(cfg.rescore)}.")
        if cfg.store not in ("numpy", "lancedb"):
            raise InputError(f"unknown store {cfg.store!r}; choose numpy or lancedb.")
    q_dims = check_dims(cfg.quantize_dims, d) if cfg.quantize_dims else dims
    q_dims = tuple(sorted(set(q_dims) | {d}))

    rows, eb_rows = [], []
    methods = ["full"] + [m for m in cfg.methods if m != "full"]
    bad = {m: v for m, v in cfg.method_seeds.items() if m not in methods or not v
           or not all(isinstance(x, int) and not isinstance(x, bool) for x in v)}
    if bad:
        m = next(iter(bad))
        raise InputError(f"method seeds for {m!r} ({bad[m]!r}) need a method of this run and a non-empty list of "
                         f"integers, e.g. {{\"adaptor-supervised\": [0]}}.")
    seeds_of = {m: tuple(cfg.method_seeds.get(m, cfg.seeds)) for m in methods}
    jobs = [(m, s, n) for m in methods
            for n in (cfg.labels if cfg.labels and m in TRAIN_QUERY_METHODS else (None,))
            for s in (seeds_of[m] if not make(m).deterministic else seeds_of[m][:1])]
    bar = tqdm(jobs, desc="benchmark", disable=not progress)
    for name, seed, n_labels in bar:
        bar.set_postfix(method=name, seed=seed, **({"labels": n_labels} if n_labels is not None else {}))
        method = make(name)
        if hasattr(method, "params"):
            method.params.update(cfg.adaptor_params)
        data = fit_data if n_labels is None else subset_fit_data(fit_data, n_labels, seed)
        label_key = {} if n_labels is None else {"labels": len(data.train_query_ids)}
        t0 = time.perf_counter()
        method.fit(data, dims + ((d,) if d not in dims else ()), seed)
        fit_s = time.perf_counter() - t0
        eval_dims = (d,) if method.full_dim_only else tuple(dims) + ((d,) if d not in dims else ())
        for m in eval_dims:
            run = retrieve(method.encode(q_test, m), method.encode(corpus, m), test_ids, ds.corpus_ids, top_k=cfg.top_k)
            rows.append({"method": name, "seed": seed, "dim": m, **label_key, "fit_seconds": round(fit_s, 3),
                         **method.fit_record(), **evaluate_run(qrels, run, recall_k=cfg.top_k)})
        if cfg.quantize:
            eb_rows += equal_bytes_rows(method, name, seed, corpus, q_test, test_ids, ds.corpus_ids, qrels, cfg,
                                        (d,) if method.full_dim_only else q_dims)
    return {
        "dataset": str(ds.path), "dataset_name": ds.name, "split": cfg.split, "train_split": cfg.train_split,
        "n_corpus": len(ds.corpus), "n_test_queries": len(test_ids), "n_train_queries": len(train_queries),
        "input_dim": d, "dims": list(dims), "methods": methods, "seeds": list(cfg.seeds),
        "method_seeds": {m: list(v) for m, v in cfg.method_seeds.items()},
        "model": cfg.model, "embeddings": cfg.embeddings or cfg.embeddings_name, "adaptor_params": cfg.adaptor_params,
        **({"labels": list(cfg.labels)} if cfg.labels else {}),
        "versions": _versions(), "machine": machine_description(),
        "rows": rows, "summary": summarize(rows),
        **({"quantize": list(cfg.quantize), "rescore": list(cfg.rescore), "store": cfg.store,
            "equal_bytes_rows": eb_rows, "equal_bytes_summary": summarize_equal_bytes(eb_rows)}
           if cfg.quantize else {}),
    }


def equal_bytes_rows(method, name: str, seed: int, corpus: np.ndarray, q_test: np.ndarray, test_ids: list[str],
                     corpus_ids: list[str], qrels: dict, cfg: BenchmarkConfig, dims: tuple[int, ...]) -> list[dict]:
    """One fitted method evaluated at every (prefix dim, precision, shortlist, rescoring vectors).

    The first stage stores the method's prefix at the given precision (int8 calibrated on the corpus
    prefix); a shortlist is rescored with the full float32 originals, and a supervised adaptor's
    also with its own full-dim adapted vectors. Bytes/vector counts the first stage's stored bytes.
    """
    d = corpus.shape[1]
    full_sources = {"original": (l2_normalize(q_test), l2_normalize(corpus))}
    if getattr(method, "supervised", False):
        full_sources["adapted"] = (method.encode(q_test, d), method.encode(corpus, d))
    out = []
    store = None
    if cfg.store == "lancedb":
        from ..index.benchmark_store import LanceFunnelStore

        store = LanceFunnelStore(seed=seed)
    for m in dims:
        qp, cp = method.encode(q_test, m), method.encode(corpus, m)
        for precision in cfg.quantize:
            # int8 ranges, binary-centered/-itq mean and rotation: fitted on this corpus prefix
            first = QuantizedVectors.encode(cp, precision, seed=seed)
            for shortlist in cfg.rescore:
                for source, (qf, cf) in (full_sources.items() if shortlist else [("none", (None, None))]):
                    k = min(cfg.top_k, shortlist) if shortlist else cfg.top_k
                    if store is not None:
                        key = (m, precision, source if shortlist else "original")
                        idx = store.search(key, cp, cf if shortlist else full_sources["original"][1], qp, qf,
                                           precision, k, shortlist)
                    else:
                        idx, _ = funnel_search(qp, first, k, shortlist=shortlist, query_full=qf, corpus_full=cf)
                    run = run_from_ranking(idx, test_ids, corpus_ids, top_k=k)
                    out.append({"method": name, "seed": seed, "dim": m, "precision": precision,
                                "bytes": bytes_per_vector(m, precision), "shortlist": shortlist, "rescore_with": source,
                                **evaluate_run(qrels, run, recall_k=cfg.top_k)})
    if store is not None:
        store.close()
    return out


def summarize_equal_bytes(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds per (method, dim, precision, shortlist, rescore_with)."""
    keys = ("method", "dim", "precision", "bytes", "shortlist", "rescore_with")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        entry = dict(zip(keys, key), n_seeds=len(rs))
        for metric in ("ndcg@10", "recall@100", "mrr@10"):
            vals = np.array([r[metric] for r in rs], dtype=float)
            entry[metric] = float(vals.mean())
            entry[f"{metric}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        out.append(entry)
    return out


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds per (method, dim) (and label count, in a label curve)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["dim"], r.get("labels")), []).append(r)
    out = []
    for (method, dim, labels), rs in groups.items():
        entry = {"method": method, "dim": dim, **({"labels": labels} if labels is not None else {}), "n_seeds": len(rs)}
        for key in ("ndcg@10", "recall@100", "mrr@10", "fit_seconds"):
            vals = np.array([r[key] for r in rs if key in r], dtype=float)
            if len(vals):
                entry[key] = float(vals.mean())
                entry[f"{key}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        out.append(entry)
    return out
