"""Label efficiency: the supervised adaptor trained on random subsets of the labelled queries.

For each label count ``n`` and seed, :func:`label_subset` draws ``n`` of the training queries that
have at least one positive judgement. The draw is a seeded permutation of those queries cut at
``n``, so for one seed the subsets are *nested* (the 25 queries are among the 50, ...) and a curve
over label counts changes one thing at a time; different seeds draw different subsets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import InputError

ALL = "all"


def parse_label_counts(text: str | Sequence) -> tuple[int | str, ...]:
    """``"25,50,all"`` -> ``(25, 50, "all")``; refuses non-positive or non-integer counts."""
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else [str(s).strip() for s in text]
    out: list[int | str] = []
    for s in items:
        if s.lower() == ALL:
            out.append(ALL)
            continue
        try:
            n = int(s)
        except ValueError:
            n = 0
        if n < 1:
            raise InputError(f"--labels takes positive integers or 'all', comma-separated (e.g. 25,50,100,all); "
                             f"got {s!r}.")
        out.append(n)
    if not out:
        raise InputError("--labels is empty; give label counts such as 25,50,100,all.")
    ints = sorted({n for n in out if n != ALL})
    return tuple(ints) + ((ALL,) if ALL in out else ())


def labelled_query_ids(query_ids: Sequence[str], qrels: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The query ids (in the given order) with at least one judgement of grade > 0."""
    return [q for q in query_ids if any(g > 0 for g in qrels.get(q, {}).values())]


def label_subset(query_ids: Sequence[str], qrels: Mapping[str, Mapping[str, float]], n: int | str,
                 seed: int) -> list[str]:
    """``n`` labelled query ids drawn at random with ``seed`` (in the given order); ``"all"``: every one.

    Deterministic per seed, and nested across ``n`` for one seed (a prefix of one permutation).
    Raises ``InputError`` when ``n`` exceeds the number of labelled queries.
    """
    eligible = labelled_query_ids(query_ids, qrels)
    if n == ALL:
        return eligible
    if n > len(eligible):
        raise InputError(f"--labels {n} is more than the {len(eligible)} labelled training queries; "
                         f"use at most {len(eligible)} or 'all'.")
    perm = np.random.default_rng(seed).permutation(len(eligible))
    keep = np.sort(perm[:n])  # the queries keep their order: the fit sees them as it would see all
    return [eligible[i] for i in keep]


def check_label_counts(counts: Sequence[int | str], query_ids: Sequence[str],
                       qrels: Mapping[str, Mapping[str, float]]) -> None:
    """Refuse, before any fitting, a label count above the number of labelled training queries."""
    n_labelled = len(labelled_query_ids(query_ids, qrels))
    too_many = [n for n in counts if n != ALL and n > n_labelled]
    if too_many:
        raise InputError(f"--labels {too_many[0]} is more than the {n_labelled} labelled training queries; "
                         f"use at most {n_labelled} or 'all'.")


def subset_fit_data(data, n: int | str, seed: int):
    """``data`` (a :class:`~matryoshka_adaptor.eval.methods.FitData`) with only the training queries of
    :func:`label_subset` (their vectors, ids and qrels); the corpus is unchanged."""
    from .methods import FitData

    keep = label_subset(data.train_query_ids, data.train_qrels, n, seed)
    pos = {q: i for i, q in enumerate(data.train_query_ids)}
    rows = [pos[q] for q in keep]
    groups = None if data.train_query_groups is None else [data.train_query_groups[r] for r in rows]
    return FitData(data.corpus, data.corpus_ids, data.train_queries[rows], keep,
                   {q: data.train_qrels[q] for q in keep}, groups)


# ------------------------------------------------------------------------------ report

SUPERVISED = "adaptor-supervised"
UNLABELLED = "adaptor-queries"


def _entry(summary, method, dim, labels=None):
    return next((e for e in summary if e["method"] == method and e["dim"] == dim and e.get("labels") == labels), None)


def label_curve_table(result: dict, metric: str = "ndcg@10") -> str:
    """Markdown: per label count, each method trained on that many queries (mean ± std over seeds),
    the label-free references, and the supervised margin over max(PCA, unlabelled fit)."""
    summary = result["summary"]
    dims = sorted({e["dim"] for e in summary if e.get("labels") is not None})
    counts = sorted({e["labels"] for e in summary if e.get("labels") is not None})
    with_labels = [m for m in result["methods"] if any(e["method"] == m and e.get("labels") is not None
                                                       for e in summary)]
    without = [m for m in result["methods"] if m != "full" and m not in with_labels]

    def cell(e):
        if e is None or metric not in e:
            return ""
        return f"{e[metric]:.4f} ± {e[metric + '_std']:.4f}" if e["n_seeds"] > 1 else f"{e[metric]:.4f}"

    lines = ["| labelled queries | method | " + " | ".join(map(str, dims)) + " |",
             "| --- | --- | " + " | ".join("---" for _ in dims) + " |"]
    for n in counts:
        for m in with_labels:
            lines.append(f"| {n} | {m} | " + " | ".join(cell(_entry(summary, m, d, n)) for d in dims) + " |")
        if SUPERVISED in with_labels:
            margins = []
            for d in dims:
                sup = _entry(summary, SUPERVISED, d, n)
                refs = [e[metric] for e in (_entry(summary, "pca", d), _entry(summary, UNLABELLED, d, n)) if e]
                margins.append(f"{sup[metric] - max(refs):+.4f}" if sup and refs else "")
            lines.append(f"| {n} | supervised − max(pca, unlabelled) | " + " | ".join(margins) + " |")
    for m in without:
        lines.append(f"| (none) | {m} | " + " | ".join(cell(_entry(summary, m, d)) for d in dims) + " |")
    return "\n".join(lines)


def plot_label_curve(result: dict, path, metric: str = "ndcg@10"):
    """One panel per dim: metric against labelled queries (log x) for each method trained on the
    subsets (error bars: std over seeds); label-free methods as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import save_png

    summary = result["summary"]
    dims = sorted({e["dim"] for e in summary if e.get("labels") is not None})
    with_labels = [m for m in result["methods"] if any(e["method"] == m and e.get("labels") is not None
                                                       for e in summary)]
    without = [m for m in result["methods"] if m != "full" and m not in with_labels]
    counts = sorted({e["labels"] for e in summary if e.get("labels") is not None})
    cols = min(3, len(dims))
    rows = -(-len(dims) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), dpi=110, squeeze=False)
    for ax, d in zip(axes.flat, dims):
        for i, m in enumerate(with_labels):
            pts = sorted((e["labels"], e[metric], e.get(metric + "_std", 0.0)) for e in summary
                         if e["method"] == m and e["dim"] == d and e.get("labels") is not None)
            if pts:
                xs, ys, es = zip(*pts)
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=m, color=f"C{i}")
        for j, m in enumerate(without):
            e = _entry(summary, m, d)
            if e is not None:
                ax.axhline(e[metric], linestyle="--", color=f"C{len(with_labels) + j}", label=m)
        ax.set_xscale("log")
        # Ticks at the measured counts only: log-axis minor labels (3x10^1, 4x10^1, ...) overlap.
        ax.set_xticks(counts, labels=[str(c) for c in counts])
        ax.minorticks_off()
        ax.set_title(f"{d} dims", fontsize=9)
        ax.set_xlabel("labelled queries")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(dims):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{result['dataset_name']} ({result['split']}): label efficiency, seeds {result['seeds']}",
                 fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)
