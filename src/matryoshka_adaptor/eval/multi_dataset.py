"""The benchmark over several datasets in one run: a table per dataset, a summary across them, and
methods fitted on one dataset and applied unchanged to the others (``<method>-from-<dataset>``).

Each dataset is an ordinary :func:`~matryoshka_adaptor.eval.benchmark.run_benchmark` run written to
``<out>/<dataset>/`` (results.json, .csv, .md, ndcg_vs_dim.png); a dataset whose results.json was
written by the same configuration is read back instead of rerun, so an interrupted run resumes.
Across datasets it writes ``summary.md`` / ``summary.json`` / ``summary.csv`` (mean and worst dataset
per method and dim, and pairwise comparisons such as adaptor vs PCA with every failure and its gap)
and ``ndcg_vs_dim_by_dataset.png`` (one panel per dataset).
"""

from __future__ import annotations

import glob
import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError
from ..persistence import atomic_write_bytes
from .benchmark import BenchmarkConfig, machine_description, run_benchmark
from .datasets import load_beir
from .methods import METHODS, FitData, FittedOn, make_method, split_transfer_name
from .report import write_report

BASELINES = ("full", "truncate", "pca", "pca-centered")
_GLOB_CHARS = set("*?[")


def expand_datasets(specs: list[str]) -> list[Path]:
    """Dataset folders from paths and (quoted) glob patterns, in the order given, without duplicates.

    A pattern keeps only the folders it matches, sorted; a pattern that matches none is an error.
    """
    out: list[Path] = []
    for spec in specs:
        if _GLOB_CHARS & set(spec):
            hits = [Path(h) for h in sorted(glob.glob(spec)) if Path(h).is_dir()]
            if not hits:
                raise InputError(f"--dataset pattern {spec!r} matches no folder.")
        else:
            hits = [Path(spec)]
            if not hits[0].is_dir():
                raise InputError(f"dataset folder {spec} does not exist.")
        out += [h for h in hits if h.resolve() not in {o.resolve() for o in out}]
    names = [p.name for p in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"datasets must have distinct folder names (tables are named by them); {dupes[0]!r} "
                         "appears twice.")
    return out


def check_methods(methods: tuple[str, ...], dataset_names: list[str]) -> dict[str, tuple[str, str]]:
    """Every method name known; ``<method>-from-<dataset>`` names a dataset of this run. Returns the transfers."""
    transfers = {}
    for name in methods:
        parts = split_transfer_name(name)
        if parts is None:
            make_method(name)
            continue
        inner, source = parts
        if inner not in METHODS:
            raise InputError(f"method {name!r}: unknown method {inner!r} before '-from-'; choose from "
                             f"{', '.join(METHODS)}.")
        if source not in dataset_names:
            raise InputError(f"method {name!r} is fitted on dataset {source!r}, which is not among the datasets of "
                             f"this run ({', '.join(dataset_names)}); add it to --dataset.")
        transfers[name] = (inner, source)
    return transfers


def _run_config(cfg: BenchmarkConfig) -> dict:
    """What decides a dataset's results: a stored results.json with the same one is reused."""
    keep = asdict(cfg)
    keep.pop("cache", None)
    keep["dataset"] = str(Path(cfg.dataset).resolve())
    return json.loads(json.dumps(keep))  # tuples -> lists, as read back from JSON


def _source_fit_data(path: Path, cfg: BenchmarkConfig) -> FitData:
    """What a method fitted on this dataset sees: its corpus and its train split (when it has one), built as
    :func:`run_benchmark` builds them."""
    from .benchmark import _vectors, train_query_groups

    ds = load_beir(path)
    train = ds.split_queries(cfg.train_split) if cfg.train_split in ds.qrels else {}
    groups = train_query_groups(cfg, path, list(train))
    corpus, queries = _vectors(ds, replace(cfg, dataset=str(path)), list(train))
    return FitData(corpus, ds.corpus_ids, queries if train else None, list(train) or None,
                   {q: ds.qrels[cfg.train_split][q] for q in train} or None, groups)


def run_multi_benchmark(datasets: list[str | Path], cfg: BenchmarkConfig, out_dir: str | Path, *,
                        summary_exclude: tuple[str, ...] = (), progress: bool = True) -> dict:
    """Run the benchmark on every dataset with the same settings and write the per-dataset and summary outputs.

    Parameters
    ----------
    datasets : list of path
        BEIR folders (see :func:`expand_datasets` for patterns).
    cfg : BenchmarkConfig
        Settings for every dataset (its ``dataset`` is ignored). Vectors come from
        ``embeddings_name`` (each dataset's ``embeddings/<name>/``, else its siblings') or from
        ``provider``/``model``; one ``embeddings`` folder cannot serve several datasets.
    out_dir : path
        ``<out>/<dataset>/`` per dataset, ``summary.*`` and the small-multiples plot at the top.
    summary_exclude : tuple of str
        Dataset names shown per dataset and in comparisons but left out of the mean and worst
        (e.g. ``pool``, the union of the languages).

    Returns
    -------
    dict
        The summary (also written to ``summary.json``).
    """
    paths = [Path(p) for p in datasets]
    names = [p.name for p in paths]
    if cfg.embeddings:
        raise InputError("--embeddings names one folder of vectors, which cannot serve several datasets; use "
                         "--embeddings-name NAME (each dataset's embeddings/NAME/) or --provider/--model.")
    if not cfg.embeddings_name and not cfg.model:
        raise InputError("give --embeddings-name NAME (each dataset's embeddings/NAME/) or --model to encode.")
    unknown = [n for n in summary_exclude if n not in names]
    if unknown:
        raise InputError(f"--summary-exclude {unknown[0]!r} is not among the datasets ({', '.join(names)}).")
    transfers = check_methods(cfg.methods, names)
    stray = [m for m in cfg.method_seeds if m not in cfg.methods]
    if stray:
        raise InputError(f"--method-seeds names {stray[0]!r}, which is not in --methods.")
    for p in paths:  # every dataset readable and with vectors, before any fit
        load_beir(p)
        if cfg.embeddings_name:
            from .dataset_vectors import vectors_source

            vectors_source(p, cfg.embeddings_name)
    sources = sorted({src for _, src in transfers.values()}, key=names.index)
    source_data = {src: _source_fit_data(paths[names.index(src)], cfg) for src in sources}
    for method, (inner, src) in transfers.items():
        probe = make_method(inner)
        if (getattr(probe, "supervised", False) or getattr(probe, "use_queries", False)) \
                and source_data[src].train_queries is None:
            raise InputError(f"method {method!r} needs {src}'s {cfg.train_split} split, which it does not have.")
    store: dict = {}  # fitted source methods, shared by every dataset (one fit per seed)

    def factory_for(name: str):
        def make(method: str):
            if method in transfers:
                inner, src = transfers[method]
                return FittedOn(inner, src, source_data[src], store, name=method, params=cfg.adaptor_params)
            probe = make_method(method)
            if name in source_data and not probe.deterministic:
                # the source dataset's own fit is the one its transfer methods reuse: fitted once
                return FittedOn(method, name, source_data[name], store, name=method, params=cfg.adaptor_params)
            return probe
        return make

    out = Path(out_dir)
    # Two passes: every dataset's cheap methods (baselines, unsupervised, transferred) first, then the
    # in-dataset supervised fits, the costly part; a summary of everything done is written after each
    # step, so a run stopped early still leaves every dataset's first pass summarised.
    costly = [m for m in cfg.methods if m not in transfers and getattr(make_method(m), "supervised", False)]
    passes = [("1", tuple(m for m in cfg.methods if m not in costly)), ("2", tuple(costly))]
    order = sources + [n for n in names if n not in sources and n not in summary_exclude] + \
        [n for n in names if n not in sources and n in summary_exclude]
    units = [(name, tag, methods) for tag, methods in passes if methods for name in order]
    parts: dict[str, dict[str, dict]] = {n: {} for n in names}
    transfer_sources = {m: src for m, (_, src) in transfers.items()}
    bar = tqdm(units, desc="datasets", disable=not progress)
    summary: dict = {}
    for name, tag, methods in bar:
        bar.set_postfix(dataset=name, part=tag)
        path = paths[names.index(name)]
        d_cfg = replace(cfg, dataset=str(path), methods=methods,
                        method_seeds={m: v for m, v in cfg.method_seeds.items() if m in methods})
        run_cfg = _run_config(d_cfg)
        stored = out / name / f"part-{tag}.json"
        old = None
        if stored.is_file():
            try:
                old = json.loads(stored.read_text())
            except (OSError, json.JSONDecodeError):
                old = None
        if old is not None and old.get("run_config") == run_cfg:
            parts[name][tag] = old
        else:
            result = run_benchmark(d_cfg, progress=progress, method_factory=factory_for(name))
            result["run_config"] = run_cfg
            (out / name).mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(stored, (json.dumps(result, indent=2) + "\n").encode())
            parts[name][tag] = result
        merged = _merge_parts(parts[name], cfg)
        write_report(merged, out / name)
        results = {n: _merge_parts(parts[n], cfg) for n in names if parts[n]}
        summary = summarize_datasets(results, summary_exclude=summary_exclude, transfer_sources=transfer_sources)
        summary.update(datasets=[n for n in names if n in results], summary_exclude=list(summary_exclude),
                       methods=["full"] + [m for m in cfg.methods if m != "full"], seeds=list(cfg.seeds),
                       method_seeds={m: list(v) for m, v in cfg.method_seeds.items()},
                       dims=sorted({e["dim"] for r in results.values() for e in r["summary"]}),
                       missing=[[n, m] for n in names for m in cfg.methods
                                if n not in results or m not in results[n]["methods"]],
                       machine=machine_description(), embeddings_name=cfg.embeddings_name, model=cfg.model,
                       provider=cfg.provider if cfg.model else None, adaptor_params=cfg.adaptor_params)
        write_multi_report(summary, results, out)
    return summary


def _merge_parts(parts: dict[str, dict], cfg: BenchmarkConfig) -> dict:
    """One dataset's result from its passes: rows of every method (the full reference once), summary redone."""
    from .benchmark import summarize

    tags = sorted(parts)
    merged = dict(parts[tags[0]])
    rows = list(merged["rows"])
    for tag in tags[1:]:
        have = {r["method"] for r in rows}
        rows += [r for r in parts[tag]["rows"] if r["method"] not in have]
    present = {r["method"] for r in rows}
    merged.update(rows=rows, summary=summarize(rows), methods=[m for m in ["full", *cfg.methods] if m in present],
                  method_seeds={m: list(v) for m, v in cfg.method_seeds.items()}, run_config=None)
    return merged


# ---- summary across datasets -------------------------------------------------------------------

def _table(results: dict[str, dict], metric: str) -> dict[tuple[str, str, int], dict]:
    return {(name, e["method"], e["dim"]): e for name, r in results.items() for e in r["summary"] if metric in e}


def comparison_pairs(methods: list[str]) -> list[tuple[str, str]]:
    """(method, baseline) pairs worth checking: each adaptor against PCA, each supervised one against
    its unsupervised counterpart."""
    pairs = []
    for m in methods:
        if m in BASELINES:
            continue
        if "pca" in methods:
            pairs.append((m, "pca"))
        plain = m.replace("-supervised", "")
        if plain != m and plain in methods:
            pairs.append((m, plain))
    return pairs


def summarize_datasets(results: dict[str, dict], *, summary_exclude: tuple[str, ...] = (),
                       transfer_sources: dict[str, str] | None = None, metric: str = "ndcg@10") -> dict:
    """Mean and worst dataset per (method, dim); pairwise comparisons with every failure; full-dim gaps.

    Comparisons involving a method fitted on dataset X leave X out (there it is the in-dataset method).
    """
    transfer_sources = transfer_sources or {}
    table = _table(results, metric)
    names = list(results)
    in_summary = [n for n in names if n not in summary_exclude]
    methods = list(dict.fromkeys(e["method"] for r in results.values() for e in r["summary"]))
    dims = sorted({e["dim"] for r in results.values() for e in r["summary"]})
    full_dim = max(dims)
    rows = []
    for name in names:
        for m in methods:
            for d in dims:
                e = table.get((name, m, d))
                if e is not None:
                    rows.append({"dataset": name, "method": m, "dim": d, "n_seeds": e["n_seeds"],
                                 metric: e[metric], f"{metric}_std": e.get(f"{metric}_std", 0.0)})
    across = []
    for m in methods:
        for d in dims:
            vals = {n: table[(n, m, d)][metric] for n in in_summary if (n, m, d) in table}
            if not vals:
                continue
            worst = min(vals, key=vals.get)
            across.append({"method": m, "dim": d, "n_datasets": len(vals), "mean": float(np.mean(list(vals.values()))),
                           "worst": vals[worst], "worst_dataset": worst})
    comparisons = []
    for a, b in comparison_pairs(methods):
        skip = {transfer_sources.get(a), transfer_sources.get(b)} - {None}
        for d in dims:
            if d == full_dim:
                continue
            margins = {n: table[(n, a, d)][metric] - table[(n, b, d)][metric] for n in names
                       if n not in skip and (n, a, d) in table and (n, b, d) in table}
            if not margins:
                continue
            fails = {n: v for n, v in margins.items() if v < 0}
            worst = min(margins, key=margins.get)
            comparisons.append({"method": a, "baseline": b, "dim": d, "n_datasets": len(margins),
                                "n_at_least": len(margins) - len(fails), "min_margin": margins[worst],
                                "min_margin_dataset": worst, "failures": dict(sorted(fails.items(), key=lambda kv: kv[1])),
                                "excluded": sorted(skip)})
    full_gaps = []
    for m in methods:
        if m == "full":
            continue
        gaps = {n: table[(n, m, full_dim)][metric] - table[(n, "full", full_dim)][metric] for n in names
                if (n, m, full_dim) in table and (n, "full", full_dim) in table}
        if gaps:
            worst = max(gaps, key=lambda n: abs(gaps[n]))
            full_gaps.append({"method": m, "dim": full_dim, "max_abs_gap": abs(gaps[worst]), "gap": gaps[worst],
                              "dataset": worst})
    return {"metric": metric, "rows": rows, "across": across, "comparisons": comparisons, "full_dim_gaps": full_gaps}


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def summary_markdown(summary: dict) -> str:
    """Mean and worst dataset per method and dim; comparisons with failures; full-dim gaps."""
    metric = summary["metric"]
    dims = sorted({e["dim"] for e in summary["across"]})
    in_summary = [n for n in summary["datasets"] if n not in summary["summary_exclude"]]
    excl = summary["summary_exclude"]
    seeds = f"seeds {summary['seeds']}" + "".join(f", {m}: {v}" for m, v in summary.get("method_seeds", {}).items())
    lines = [f"**{metric}, mean and worst over {len(in_summary)} datasets** ({', '.join(in_summary)}"
             + (f"; not in these: {', '.join(excl)}" if excl else "") + f"; {seeds}; mean of seeds)",
             "", "| method | | " + " | ".join(str(d) for d in dims) + " |",
             "| --- | --- | " + " | ".join("---" for _ in dims) + " |"]
    by = {(e["method"], e["dim"]): e for e in summary["across"]}
    for m in summary["methods"]:
        if not any((m, d) in by for d in dims):
            continue
        n = max(by[(m, d)]["n_datasets"] for d in dims if (m, d) in by)
        label = "mean" if n == len(in_summary) else f"mean of {n}"
        lines.append(f"| {m} | {label} | " + " | ".join(_fmt(by[(m, d)]["mean"]) if (m, d) in by else "" for d in dims)
                     + " |")
        lines.append(f"| | worst | " + " | ".join(
            f"{_fmt(by[(m, d)]['worst'])} ({by[(m, d)]['worst_dataset']})" if (m, d) in by else "" for d in dims) + " |")
    rows = {(r["dataset"], r["method"], r["dim"]): r for r in summary["rows"]}
    for name in [n for n in excl if n in summary["datasets"]]:
        lines += ["", f"**{name}** ({metric}, mean of seeds)", "", "| method | " + " | ".join(str(d) for d in dims) + " |",
                  "| --- | " + " | ".join("---" for _ in dims) + " |"]
        for m in summary["methods"]:
            if any((name, m, d) in rows for d in dims):
                lines.append(f"| {m} | " + " | ".join(_fmt(rows[(name, m, d)][metric]) if (name, m, d) in rows else ""
                                                    for d in dims) + " |")
    comp = summary["comparisons"]
    if comp:
        cdims = sorted({c["dim"] for c in comp})
        lines += ["", f"**Comparisons over every dataset** (cell: datasets where method ≥ baseline / datasets, "
                  "smallest margin and where; a method fitted on dataset X is compared on the others)", "",
                  "| method vs baseline | " + " | ".join(str(d) for d in cdims) + " |",
                  "| --- | " + " | ".join("---" for _ in cdims) + " |"]
        cby = {(c["method"], c["baseline"], c["dim"]): c for c in comp}
        for a, b in dict.fromkeys((c["method"], c["baseline"]) for c in comp):
            cells = []
            for d in cdims:
                c = cby.get((a, b, d))
                cells.append("" if c is None else f"{c['n_at_least']}/{c['n_datasets']}, {c['min_margin']:+.3f} "
                             f"({c['min_margin_dataset']})")
            lines.append(f"| {a} vs {b} | " + " | ".join(cells) + " |")
        fails = [c for c in comp if c["failures"]]
        lines += ["", "Failures (method below baseline): " + ("none." if not fails else "; ".join(
            f"{c['method']} vs {c['baseline']} at {c['dim']}: " + ", ".join(f"{n} {v:+.4f}" for n, v in c["failures"].items())
            for c in fails) + ".")]
    if summary.get("missing"):
        lines += ["", "Not run (dataset: methods): " + "; ".join(
            f"{n}: {', '.join(m for d, m in summary['missing'] if d == n)}"
            for n in dict.fromkeys(d for d, _ in summary["missing"])) + "."]
    if summary["full_dim_gaps"]:
        lines += ["", "Largest full-dim difference from the original vectors, every dataset: " + "; ".join(
            f"{g['method']} {g['gap']:+.4f} ({g['dataset']})" for g in summary["full_dim_gaps"]) + "."]
    return "\n".join(lines)


def plot_small_multiples(summary: dict, path: str | Path, metric: str = "ndcg@10", ncols: int = 4) -> Path:
    """One panel per dataset: metric against dim (log x) for each method, the full-dim original dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import save_png

    excl = summary.get("summary_exclude", [])
    names = [n for n in summary["datasets"] if n not in excl] + [n for n in summary["datasets"] if n in excl]
    methods = [m for m in summary["methods"] if m != "full"]
    ncols = min(ncols, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.7 * nrows + 0.8), dpi=110, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    rows = summary["rows"]
    handles = {}
    for k, name in enumerate(names):
        ax = axes[k // ncols][k % ncols]
        for i, m in enumerate(methods):
            pts = sorted((r["dim"], r[metric], r[f"{metric}_std"]) for r in rows if r["dataset"] == name and r["method"] == m)
            if pts:
                xs, ys, es = zip(*pts)
                h = ax.errorbar(xs, ys, yerr=es, marker="o", ms=3, lw=1.2, capsize=2, color=colours[i % len(colours)])
                handles.setdefault(m, h)
        full = [r for r in rows if r["dataset"] == name and r["method"] == "full"]
        if full:
            handles.setdefault("full", ax.axhline(full[0][metric], color="grey", ls="--", lw=1))
        dims = sorted({r["dim"] for r in rows if r["dataset"] == name})
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims)
        ax.set_xticklabels([str(d) for d in dims], fontsize=7)
        ax.minorticks_off()
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    for k in range(len(names), nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    fig.supxlabel("embedding dimension (log scale)", fontsize=9)
    fig.supylabel(metric, fontsize=9)
    ncol = min(len(handles), 4)
    top = 1 - (0.25 + 0.22 * math.ceil(len(handles) / ncol)) / fig.get_figheight()
    fig.legend(list(handles.values()), [m if m != "full" else "full (original vectors)" for m in handles],
               loc="upper center", bbox_to_anchor=(0.5, 1.0), ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, top))
    return save_png(fig, path)


def write_multi_report(summary: dict, results: dict[str, dict], out_dir: str | Path) -> dict[str, Path]:
    """``summary.md`` (summary, comparisons, and every dataset's table), ``summary.json``, ``summary.csv``
    (one row per dataset, method and dim) and ``ndcg_vs_dim_by_dataset.png``."""
    from .report import markdown_table, write_csv

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "summary.md", "json": out / "summary.json", "csv": out / "summary.csv",
             "png": out / "ndcg_vs_dim_by_dataset.png"}
    atomic_write_bytes(paths["json"], (json.dumps(summary, indent=2) + "\n").encode())
    metric = summary["metric"]
    write_csv(paths["csv"], ["dataset", "method", "dim", "n_seeds", metric, f"{metric}_std"], summary["rows"])
    m = summary["machine"]
    md = [f"# {metric} by dimension over {len(results)} datasets", "", summary_markdown(summary), "",
          "## Per dataset", ""]
    for name, r in results.items():
        md += [f"### {name} ({r['n_corpus']} documents, {r['n_test_queries']} {r['split']} queries)", "",
               markdown_table(r, metric), ""]
    md += [f"Seeds: {summary['seeds']}. Machine: {m['cpu']} ({m['cores']} cores), GPU: {m['gpu']}.", ""]
    atomic_write_bytes(paths["md"], "\n".join(md).encode())
    plot_small_multiples(summary, paths["png"], metric)
    return paths
