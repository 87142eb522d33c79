"""Benchmark outputs: results.json, results.csv, results.md and ndcg_vs_dim.png (all written atomically)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from ..formats import atomic_path
from ..persistence import atomic_write_bytes



def write_csv(path: str | Path, fields: list[str], rows, *, extrasaction: str = "raise") -> None:
    """``rows`` (dicts) as CSV with a header of ``fields``, written atomically (every table of the reports)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction=extrasaction)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def save_png(fig, path: str | Path) -> Path:
    """Write a matplotlib figure to ``path`` as PNG, atomically, and close it (every plot of the reports)."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)

def markdown_table(result: dict, metric: str = "ndcg@10") -> str:
    summary = result["summary"]
    dims = sorted({e["dim"] for e in summary})
    full = next((e for e in summary if e["method"] == "full"), None)
    methods = [m for m in result["methods"] if m != "full"]
    lines = [f"| method | " + " | ".join(str(m) for m in dims) + " |",
             "| --- | " + " | ".join("---" for _ in dims) + " |"]
    for method in [m for m in methods if any(e["method"] == m and "labels" not in e for e in summary)]:
        cells = []
        for m in dims:
            e = next((x for x in summary if x["method"] == method and x["dim"] == m and "labels" not in x), None)
            if e is None or metric not in e:
                cells.append("")
            elif e["n_seeds"] > 1:
                cells.append(f"{e[metric]:.4f} ± {e[metric + '_std']:.4f}")
            else:
                cells.append(f"{e[metric]:.4f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if full is not None:
        lines.append("| full (reference) | " + " | ".join(
            f"{full[metric]:.4f}" if m == full["dim"] else "" for m in dims) + " |")
    return "\n".join(lines)


def plot_ndcg_vs_dim(result: dict, path: str | Path, metric: str = "ndcg@10") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for method in [m for m in result["methods"] if m != "full"]:
        pts = sorted((e["dim"], e[metric], e.get(metric + "_std", 0.0)) for e in summary
                     if e["method"] == method and "labels" not in e)
        if pts:
            xs, ys, es = zip(*pts)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method)
    full = next((e for e in summary if e["method"] == "full"), None)
    if full is not None:
        ax.axhline(full[metric], color="grey", linestyle="--", label=f"full ({full['dim']} dims)")
    ax.set_xscale("log", base=2)
    dims = sorted({e["dim"] for e in summary})
    ax.set_xticks(dims)
    ax.set_xticklabels([str(d) for d in dims])
    ax.set_xlabel("embedding dimension")
    ax.set_ylabel(metric)
    ax.set_title(f"{result['dataset_name']} ({result['split']}), {result.get('model') or result.get('embeddings')}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def write_report(result: dict, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "csv": out / "results.csv", "md": out / "results.md",
             "png": out / "ndcg_vs_dim.png"}
    atomic_write_bytes(paths["json"], (json.dumps(result, indent=2) + "\n").encode())
    fields = ["method", "dim", "n_seeds", "ndcg@10", "ndcg@10_std", "recall@100", "recall@100_std", "mrr@10",
              "mrr@10_std", "fit_seconds"]
    write_csv(paths["csv"], fields, result["summary"], extrasaction="ignore")
    md = [f"# {result['dataset_name']}: nDCG@10 by dimension ({result['split']} split)", "",
          markdown_table(result), "", f"Seeds: {result['seeds']}. Machine: {result['machine']['cpu']} "
          f"({result['machine']['cores']} cores), GPU: {result['machine']['gpu']}.", ""]
    atomic_write_bytes(paths["md"], "\n".join(md).encode())
    plot_ndcg_vs_dim(result, paths["png"])
    if result.get("labels"):
        from .label_curve import label_curve_table, plot_label_curve

        paths["labels_md"], paths["labels_png"] = out / "label_curve.md", out / "ndcg_vs_labels.png"
        md = [f"# {result['dataset_name']}: nDCG@10 by labelled training queries ({result['split']} split)", "",
              label_curve_table(result), "", f"Seeds: {result['seeds']} (each seed draws its own nested subsets). "
              f"Machine: {result['machine']['cpu']} ({result['machine']['cores']} cores).", ""]
        atomic_write_bytes(paths["labels_md"], "\n".join(md).encode())
        plot_label_curve(result, paths["labels_png"])
    if result.get("equal_bytes_summary"):
        paths["equal_bytes_csv"] = out / "equal_bytes.csv"
        paths["equal_bytes_md"] = out / "equal_bytes.md"
        paths["equal_bytes_png"] = out / "ndcg_vs_bytes.png"
        fields = ["method", "dim", "precision", "bytes", "shortlist", "rescore_with", "n_seeds", "ndcg@10",
                  "ndcg@10_std", "recall@100", "recall@100_std", "mrr@10", "mrr@10_std"]
        write_csv(paths["equal_bytes_csv"], fields, result["equal_bytes_summary"], extrasaction="ignore")
        md = [f"# {result['dataset_name']}: nDCG@10 at equal bytes ({result['split']} split, store: "
              f"{result['store']})", "", equal_bytes_tables(result), "", "**Every configuration**", "",
              equal_bytes_full_table(result), "", f"Seeds: {result['seeds']}. Machine: {result['machine']['cpu']} "
              f"({result['machine']['cores']} cores).", ""]
        atomic_write_bytes(paths["equal_bytes_md"], "\n".join(md).encode())
        plot_ndcg_vs_bytes(result, paths["equal_bytes_png"])
    return paths


# ---- equal bytes: first-stage bytes/vector against nDCG@10 ----------------------------------------

BASELINE_FAMILIES = ("full", "truncate", "pca", "pca-centered")
BUDGETS = (8, 16, 32, 48, 64, 128, 256, 384)  # the targets cover 8-256; 384 = full-dim int8


def _cell(e: dict | None, metric: str = "ndcg@10") -> str:
    if e is None:
        return ""
    return f"{e[metric]:.4f} ± {e[metric + '_std']:.4f}" if e["n_seeds"] > 1 else f"{e[metric]:.4f}"


def _label(e: dict) -> str:
    rescored = f", top-{e['shortlist']} rescored ({e['rescore_with']})" if e["shortlist"] else ""
    return f"{e['method']} {e['dim']}d {e['precision']}{rescored}"


def _best(entries, budget, metric="ndcg@10"):
    fits = [e for e in entries if e["bytes"] <= budget]
    return max(fits, key=lambda e: (e[metric], -e["bytes"])) if fits else None


def pareto_front(entries: list[dict], metric: str = "ndcg@10") -> list[dict]:
    """Configurations that no other configuration beats with at most as many bytes."""
    front, best = [], -np.inf
    for e in sorted(entries, key=lambda e: (e["bytes"], -e[metric])):
        if e[metric] > best:
            front.append(e)
            best = e[metric]
    return front


def equal_bytes_tables(result: dict, metric: str = "ndcg@10", max_shortlist: int = 100) -> str:
    """The markdown tables of the equal-bytes evaluation: targets by budget, rescoring, and every row."""
    summary = result["equal_bytes_summary"]
    methods = list(dict.fromkeys(e["method"] for e in summary))
    adaptors = [m for m in methods if m not in BASELINE_FAMILIES]
    baselines = [e for e in summary if e["method"] in BASELINE_FAMILIES and e["shortlist"] == 0]
    out = [f"**No rescoring: best {metric} at each first-stage budget** (every configuration with at most "
           "that many bytes/vector; baselines = full, truncate and PCA at every precision of the run).", "",
           "| bytes/vector | best baseline | " + " | ".join(f"best {m}" for m in adaptors) + " |",
           "| --- | --- | " + " | ".join("---" for _ in adaptors) + " |"]
    for b in BUDGETS:
        base = _best(baselines, b, metric)
        cells = [f"{_cell(base, metric)} ({_label(base)})" if base else "–"]
        for m in adaptors:
            best = _best([e for e in summary if e["method"] == m and e["shortlist"] == 0], b, metric)
            if best is None:
                cells.append("–")
                continue
            mark = "" if base is None else (" ✓" if best[metric] >= base[metric] else " ✗")
            cells.append(f"{_cell(best, metric)} ({best['dim']}d {best['precision']}){mark}")
        out.append(f"| {b} | " + " | ".join(cells) + " |")
    shortlists = sorted({e["shortlist"] for e in summary if 0 < e["shortlist"] <= max_shortlist})
    if shortlists:
        out += ["", f"**With rescoring (shortlist ≤ {max_shortlist}): best {metric} at each first-stage budget** "
                "(rescored with the full float32 originals; `adapted`: a supervised adaptor's own full-dim "
                "vectors).", "",
                "| bytes/vector | " + " | ".join(methods) + " |", "| --- | " + " | ".join("---" for _ in methods) + " |"]
        for b in BUDGETS:
            cells = []
            for m in methods:
                best = _best([e for e in summary if e["method"] == m and 0 < e["shortlist"] <= max_shortlist], b, metric)
                cells.append(f"{_cell(best, metric)} ({best['dim']}d {best['precision']}, top-{best['shortlist']}"
                             f"{', adapted' if best['rescore_with'] == 'adapted' else ''})" if best else "–")
            out.append(f"| {b} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def equal_bytes_full_table(result: dict, metric: str = "ndcg@10") -> str:
    """Every (method, dim, precision) row; columns: shortlist sizes (and rescoring vectors)."""
    summary = result["equal_bytes_summary"]
    cols = sorted({(e["shortlist"], e["rescore_with"]) for e in summary})
    head = ["no rescoring" if s == 0 else f"top-{s} ({w})" for s, w in cols]
    lines = ["| method | dim | precision | bytes/vector | " + " | ".join(head) + " |",
             "| --- | --- | --- | --- | " + " | ".join("---" for _ in cols) + " |"]
    by = {(e["method"], e["dim"], e["precision"], e["shortlist"], e["rescore_with"]): e for e in summary}
    keys = sorted({(e["method"], e["dim"], e["precision"], e["bytes"]) for e in summary},
                  key=lambda k: (list(dict.fromkeys(x["method"] for x in summary)).index(k[0]), k[3], k[1]))
    for method, dim, precision, nbytes in keys:
        cells = [_cell(by.get((method, dim, precision, s, w)), metric) for s, w in cols]
        lines.append(f"| {method} | {dim} | {precision} | {nbytes} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_ndcg_vs_bytes(result: dict, path: str | Path, metric: str = "ndcg@10", shortlist: int = 100) -> Path:
    """nDCG@10 against first-stage bytes/vector (log x): one line per family (its own Pareto front),
    the overall Pareto front circled; left panel without rescoring, right with a top-``shortlist`` rescoring."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["equal_bytes_summary"]
    methods = list(dict.fromkeys(e["method"] for e in summary))
    markers = {"float32": "o", "int8": "s", "binary": "^", "binary-centered": "v", "binary-itq": "D"}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), dpi=120, sharey=True)
    panels = [("no rescoring", lambda e: e["shortlist"] == 0),
              (f"top-{shortlist} rescored with full vectors", lambda e: e["shortlist"] == shortlist)]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, keep) in zip(axes, panels):
        panel = [e for e in summary if keep(e)]
        families = [(m, w) for m in methods for w in ("none", "original", "adapted")
                    if any(e["method"] == m and e["rescore_with"] == w for e in panel)]
        for i, (m, w) in enumerate(families):
            pts = [e for e in panel if e["method"] == m and e["rescore_with"] == w]
            colour = colours[i % len(colours)]
            for e in pts:
                ax.scatter(e["bytes"], e[metric], marker=markers[e["precision"]], color=colour, s=14, alpha=0.5)
            front = pareto_front(pts, metric)
            ax.plot([e["bytes"] for e in front], [e[metric] for e in front], color=colour, lw=1.5,
                    label=m + (" (adapted)" if w == "adapted" else ""))
        front = pareto_front(panel, metric)
        ax.plot([e["bytes"] for e in front], [e[metric] for e in front], ls="", marker="o", ms=11, mfc="none",
                mec="black", label="Pareto front (all)")
        ax.set_xscale("log", base=2)
        ticks = sorted({e["bytes"] for e in panel})
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks], fontsize=7, rotation=45)
        ax.minorticks_off()
        ax.set_xlabel("first-stage bytes/vector (log scale)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(metric)
    handles, labels = axes[0].get_legend_handles_labels()
    h2, l2 = axes[1].get_legend_handles_labels()
    for h, lab in zip(h2, l2):
        if lab not in labels:
            handles.append(h)
            labels.append(lab)
    for p, mk in markers.items():
        handles.append(plt.Line2D([], [], ls="", marker=mk, color="grey"))
        labels.append(p)
    axes[1].legend(handles, labels, fontsize=7, loc="lower right")
    fig.suptitle(f"{result['dataset_name']} ({result['split']}): {metric} vs bytes/vector, seeds {result['seeds']}",
                 fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)
