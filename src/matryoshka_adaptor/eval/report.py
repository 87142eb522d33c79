"""Benchmark outputs: results.json, results.csv, results.md and ndcg_vs_dim.png (all written atomically)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..formats import atomic_path
from ..persistence import atomic_write_bytes


def markdown_table(result: dict, metric: str = "ndcg@10") -> str:
    summary = result["summary"]
    dims = sorted({e["dim"] for e in summary})
    full = next((e for e in summary if e["method"] == "full"), None)
    methods = [m for m in result["methods"] if m != "full"]
    lines = [f"| method | " + " | ".join(str(m) for m in dims) + " |",
             "| --- | " + " | ".join("---" for _ in dims) + " |"]
    for method in methods:
        cells = []
        for m in dims:
            e = next((x for x in summary if x["method"] == method and x["dim"] == m), None)
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
        pts = sorted((e["dim"], e[metric], e.get(metric + "_std", 0.0)) for e in summary if e["method"] == method)
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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def write_report(result: dict, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "csv": out / "results.csv", "md": out / "results.md",
             "png": out / "ndcg_vs_dim.png"}
    atomic_write_bytes(paths["json"], (json.dumps(result, indent=2) + "\n").encode())
    buf = io.StringIO()
    fields = ["method", "dim", "n_seeds", "ndcg@10", "ndcg@10_std", "recall@100", "recall@100_std", "mrr@10",
              "mrr@10_std", "fit_seconds"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(result["summary"])
    atomic_write_bytes(paths["csv"], buf.getvalue().encode())
    md = [f"# {result['dataset_name']}: nDCG@10 by dimension ({result['split']} split)", "",
          markdown_table(result), "", f"Seeds: {result['seeds']}. Machine: {result['machine']['cpu']} "
          f"({result['machine']['cores']} cores), GPU: {result['machine']['gpu']}.", ""]
    atomic_write_bytes(paths["md"], "\n".join(md).encode())
    plot_ndcg_vs_dim(result, paths["png"])
    return paths
