"""Merge the results.json of several ``matryoshka-adaptor benchmark`` runs on the same dataset into one report.

Long benchmarks are run in pieces (e.g. the unsupervised methods, then ``adaptor-supervised``) so that
each piece's results are on disk when it ends; this joins their rows, keeping the first run's row for
any (method, seed) present in several (``full`` is in every run), recomputes the summaries and writes
the usual report files. Usage:

    python benchmarks/merge_benchmark_results.py results/sf-unsup/results.json results/sf-sup/results.json --out results/sf
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
    for r in results:
        pairs = {(row["method"], row["seed"]) for row in r["rows"]} - seen
        rows += [row for row in r["rows"] if (row["method"], row["seed"]) in pairs]
        eb_rows += [row for row in r.get("equal_bytes_rows", []) if (row["method"], row["seed"]) in pairs]
        seen |= pairs
        methods += [m for m in r["methods"] if m not in methods]
    merged.update(rows=rows, summary=summarize(rows), methods=methods,
                  seeds=sorted({s for r in results for s in r["seeds"]}), merged_from=len(results))
    if any("equal_bytes_rows" in r for r in results):
        merged.update(equal_bytes_rows=eb_rows, equal_bytes_summary=summarize_equal_bytes(eb_rows),
                      quantize=sorted({p for r in results for p in r.get("quantize", [])}),
                      rescore=sorted({s for r in results for s in r.get("rescore", [])}))
    return merged


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path, help="results.json files of benchmark runs")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    merged = merge([json.loads(p.read_text()) for p in args.results])
    paths = write_report(merged, args.out)
    if merged.get("equal_bytes_summary"):
        print(equal_bytes_tables(merged))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")


if __name__ == "__main__":
    main()
