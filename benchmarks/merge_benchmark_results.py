"""Merge the results.json of several ``matryoshka-adaptor benchmark`` runs on the same dataset into one report.

Long benchmarks are run in pieces (e.g. the unsupervised methods, then ``adaptor-supervised``) so that
each piece's results are on disk when it ends; this joins their rows, keeping the first run's row for
any (method, seed) present in several (``full`` is in every run), recomputes the summaries and writes
the usual report files. Usage:

    python benchmarks/merge_benchmark_results.py results/sf-unsup/results.json results/sf-sup/results.json --out results/sf

Runs of a label curve (``--labels``) may differ in label counts and seeds: rows are told apart by
(method, seed, label count) and the label-curve table and plot are written for every count.

With ``--multi``, the arguments are output folders of multi-dataset runs (``benchmark --dataset A B
...``): each dataset's ``results.json`` is merged across the folders that have it (first folder
first), and the cross-dataset summary, per-dataset reports and small-multiples plot are written anew.
A folder may also hold single-dataset runs as ``<dataset>/results.json`` and no ``summary.json`` (e.g.
one method re-run dataset by dataset, each merged first without ``--multi``); at least one folder must
be a multi-dataset run, whose ``summary.json`` gives the machine and model:

    python benchmarks/merge_benchmark_results.py --multi results/xq-seed0 results/xq-seeds12 --out results/xq \
        --summary-exclude pool
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matryoshka_adaptor.errors import InputError
from matryoshka_adaptor.eval.benchmark import summarize, summarize_equal_bytes
from matryoshka_adaptor.eval.report import equal_bytes_tables, write_report


def merge(results: list[dict]) -> dict:
    first = results[0]
    for r in results[1:]:
        for key in ("dataset_name", "split", "input_dim", "embeddings", "model"):
            if r.get(key) != first.get(key):
                raise InputError(f"cannot merge runs with different {key}: {first.get(key)!r} vs {r.get(key)!r}.")
    merged = dict(first)
    seen, rows, eb_rows, methods = set(), [], [], []
    def key(row):  # a label-curve run's rows also differ by label count
        return row["method"], row["seed"], row.get("labels")

    for r in results:
        pairs = {key(row) for row in r["rows"]} - seen
        rows += [row for row in r["rows"] if key(row) in pairs]
        eb_rows += [row for row in r.get("equal_bytes_rows", []) if key(row) in pairs]
        seen |= pairs
        methods += [m for m in r["methods"] if m not in methods]
    merged.update(rows=rows, summary=summarize(rows), methods=methods,
                  seeds=sorted({s for r in results for s in r["seeds"]}), merged_from=len(results))
    labels = [n for r in results for n in r.get("labels") or []]
    if labels:  # label counts in curve order (numbers, then "all")
        merged["labels"] = sorted(set(labels), key=lambda n: (isinstance(n, str), n if isinstance(n, int) else 0))
    if any("equal_bytes_rows" in r for r in results):
        merged.update(equal_bytes_rows=eb_rows, equal_bytes_summary=summarize_equal_bytes(eb_rows),
                      quantize=sorted({p for r in results for p in r.get("quantize", [])}),
                      rescore=sorted({s for r in results for s in r.get("rescore", [])}))
    return merged


def datasets_in(folder: Path, summary: dict | None) -> list[str]:
    """The datasets of a run folder: its summary's list, or (a folder of single-dataset runs without a
    summary.json) the subfolders that hold a results.json."""
    if summary:
        return summary["datasets"]
    return sorted(d.name for d in folder.iterdir() if (d / "results.json").is_file())


def merge_multi(folders: list[Path], out: Path, summary_exclude: tuple[str, ...]) -> dict:
    """Merge multi-dataset run folders dataset by dataset and rewrite the cross-dataset outputs."""
    from matryoshka_adaptor.eval.multi_dataset import summarize_datasets, write_multi_report
    from matryoshka_adaptor.eval.methods import split_transfer_name

    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise InputError(f"not a folder: {', '.join(missing)}; --multi takes benchmark output folders.")
    summaries = [json.loads((f / "summary.json").read_text()) if (f / "summary.json").is_file() else None
                 for f in folders]
    if not any(summaries):
        raise InputError("no folder has a summary.json: put a multi-dataset run's folder among them.")
    names = list(dict.fromkeys(n for f, s in zip(folders, summaries) for n in datasets_in(f, s)))
    results = {}
    for name in names:
        runs = [json.loads((f / name / "results.json").read_text()) for f in folders
                if (f / name / "results.json").is_file()]
        results[name] = merge(runs)
        write_report(results[name], out / name)
    methods = list(dict.fromkeys(m for r in results.values() for m in r["methods"]))
    transfers = {m: parts[1] for m in methods if (parts := split_transfer_name(m))}
    summary = summarize_datasets(results, summary_exclude=summary_exclude, transfer_sources=transfers)
    method_seeds: dict[str, set] = {}
    for r in results.values():
        for row in r["rows"]:
            method_seeds.setdefault(row["method"], set()).add(row["seed"])
    first = next(s for s in summaries if s)
    summary.update(datasets=names, summary_exclude=list(summary_exclude), methods=methods,
                   seeds=sorted({s for r in results.values() for s in r["seeds"]}),
                   method_seeds={m: sorted(v) for m, v in method_seeds.items()},
                   dims=sorted({e["dim"] for r in results.values() for e in r["summary"]}),
                   missing=[], machine=first["machine"], embeddings_name=first.get("embeddings_name"),
                   model=first.get("model"), provider=first.get("provider"),
                   adaptor_params=first.get("adaptor_params"), merged_from=[str(f) for f in folders])
    write_multi_report(summary, results, out)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path, help="results.json files of benchmark runs (--multi: run folders)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--multi", action="store_true", help="merge multi-dataset run folders")
    ap.add_argument("--summary-exclude", default="", help="--multi: datasets left out of the mean and worst")
    args = ap.parse_args()
    if args.multi:
        exclude = tuple(n for n in args.summary_exclude.split(",") if n)
        merge_multi(args.results, args.out, exclude)
        print(f"wrote {args.out / 'summary.md'}")
        return
    merged = merge([json.loads(p.read_text()) for p in args.results])
    paths = write_report(merged, args.out)
    if merged.get("equal_bytes_summary"):
        print(equal_bytes_tables(merged))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")


if __name__ == "__main__":
    main()
