"""QPS and latency of the LanceDB funnel against full-dim search on the same table, and on-disk bytes.

For each store (SciFact MiniLM vectors, and a synthetic N x 384 table) one LanceDB table holds the
prefix column and the full float32 column; we time, on already-encoded queries (the embedding model
is not part of the timing):

* full-dim: LanceDB's exhaustive search on the ``full`` column (dot), top 10;
* funnel: first stage on the ``prefix`` column (binary Hamming / int8 scan / float32 dot), shortlist S,
  rescored with the ``full`` vectors of the shortlist (``take_offsets``), top 10;

one query at a time (latency p50 / p99) and in batches of 64 (QPS), plus recall@10 of each funnel
against the full-dim result. On-disk bytes per column: each column written alone into its own
LanceDB table, measured with ``du``. Usage:

    python benchmarks/funnel_speed.py --scifact ../shared/data/scifact --synthetic 1000000 --out results/funnel_speed
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from matryoshka_adaptor.embed.sources import load_precomputed
from matryoshka_adaptor.eval.benchmark import machine_description
from matryoshka_adaptor.index import FunnelIndex, iter_arrays
from matryoshka_adaptor.quantization import bytes_per_vector
from matryoshka_adaptor.validation import l2_normalize

CONFIGS = [("binary", 128, 100), ("binary", 256, 100), ("int8", 64, 100), ("float32", 64, 100)]


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def synthetic(n: int, d: int, path: Path, seed: int = 0, chunk: int = 100_000) -> np.memmap:
    """Unit vectors with low-rank structure (64 latent dims + noise), written chunk by chunk."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((64, d)).astype(np.float32)
    centres = rng.standard_normal((256, 64)).astype(np.float32) * 2
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        z = centres[rng.integers(0, 256, e - s)] + rng.standard_normal((e - s, 64)).astype(np.float32)
        x = z @ basis + 0.5 * rng.standard_normal((e - s, d)).astype(np.float32)
        out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    return np.load(path, mmap_mode="r")


def time_search(fn, queries: np.ndarray, single: int, batched: int = 256, batch: int = 64) -> dict:
    lat = []
    for i in range(min(single, len(queries))):
        t0 = time.perf_counter()
        fn(queries[i:i + 1])
        lat.append(time.perf_counter() - t0)
    nb = min(len(queries), batched)
    t0 = time.perf_counter()
    for s in range(0, nb, batch):
        fn(queries[s:s + batch])
    qps = nb / (time.perf_counter() - t0)
    lat = np.array(lat) * 1000
    return {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "qps_batched": float(qps), "single_queries": len(lat), "batched_queries": nb}


def run_store(name: str, corpus: np.ndarray, queries: np.ndarray, root: Path, single: int, batched: int,
              configs: list[tuple[str, int, int]]) -> dict:
    full_q = l2_normalize(queries)
    ids = [str(i) for i in range(len(corpus))]
    out = {"name": name, "n": int(len(corpus)), "d": int(corpus.shape[1]), "configs": []}
    baseline_rows = None
    for precision, dim, shortlist in configs:
        path = root / f"{name}-{precision}-{dim}"
        shutil.rmtree(path, ignore_errors=True)
        t0 = time.perf_counter()
        index = FunnelIndex.create(path, dim=dim, precision=precision, input_dim=corpus.shape[1],
                                   calibration=corpus[:: max(1, len(corpus) // 100_000)])
        index.add(iter_arrays(corpus, ids, batch_rows=65536), total=len(corpus), progress=True)
        build_s = time.perf_counter() - t0
        qp, qf = index._encode(queries, name="queries")
        tbl = index.table

        def full_search(q):  # the same table, its float32 `full` column
            return tbl.search(q, vector_column_name="full").distance_type("dot").limit(10).select(
                ["row", "_distance"]).to_arrow()

        if baseline_rows is None:
            res = full_search(qf)
            qi = res.column("query_index").to_numpy()
            rows = res.column("row").to_numpy()
            baseline_rows = [set(rows[qi == i].tolist()) for i in range(len(qf))]
            out["full_dim"] = {"bytes_per_vector": 4 * corpus.shape[1],
                               **time_search(lambda q: full_search(l2_normalize(q)), queries, single, batched)}
            print(name, "full", out["full_dim"], flush=True)
        hits = index.search_encoded(qp, qf, 10, shortlist).rows
        recall = float(np.mean([len(set(h.tolist()) & b) / 10 for h, b in zip(hits, baseline_rows)]))
        first_only = index.search_encoded(qp, qf, 10, 0).rows
        recall0 = float(np.mean([len(set(h.tolist()) & b) / 10 for h, b in zip(first_only, baseline_rows)]))

        def funnel(q, index=index, shortlist=shortlist):
            p, f = index._encode(q, name="queries")
            return index.search_encoded(p, f, 10, shortlist)

        def first_stage(q, index=index):
            p, f = index._encode(q, name="queries")
            return index.search_encoded(p, f, 10, 0)

        row = {"precision": precision, "dim": dim, "shortlist": shortlist,
               "prefix_bytes_per_vector": bytes_per_vector(dim, precision), "build_seconds": build_s,
               "recall@10_vs_full": recall, "recall@10_first_stage_only": recall0,
               "funnel": time_search(funnel, queries, single, batched),
               "first_stage_only": time_search(first_stage, queries, single, batched),
               "table_bytes": du(path)}
        out["configs"].append(row)
        print(name, json.dumps(row), flush=True)
        shutil.rmtree(path, ignore_errors=True)
    out["column_bytes"] = column_bytes(corpus, ids, root / f"{name}-columns")
    print(name, "column bytes", out["column_bytes"], flush=True)
    return out


def column_bytes(corpus: np.ndarray, ids: list[str], root: Path) -> dict:
    """Each column written alone into a LanceDB table; bytes on disk."""
    import lancedb
    import pyarrow as pa

    shutil.rmtree(root, ignore_errors=True)
    db = lancedb.connect(str(root))
    n, d = corpus.shape
    sizes = {}
    from matryoshka_adaptor.quantization import int8_ranges, quantize_binary, quantize_int8

    def fixed(a, t):
        return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(a).reshape(-1), t), a.shape[1])

    makers = {
        "id (string) + row (int64)": lambda s, e: {"id": pa.array(ids[s:e]), "row": pa.array(np.arange(s, e))},
        "full float32 384": lambda s, e: {"full": fixed(l2_normalize(np.asarray(corpus[s:e])), pa.float32())},
        "prefix binary 128 (16 B)": lambda s, e: {"p": fixed(quantize_binary(np.asarray(corpus[s:e, :128])), pa.uint8())},
        "prefix binary 256 (32 B)": lambda s, e: {"p": fixed(quantize_binary(np.asarray(corpus[s:e, :256])), pa.uint8())},
        "prefix int8 64 (64 B)": lambda s, e: {"p": fixed(quantize_int8(np.asarray(corpus[s:e, :64]), ranges), pa.int8())},
        "prefix float32 64 (256 B)": lambda s, e: {"p": fixed(np.asarray(corpus[s:e, :64]), pa.float32())},
    }
    ranges = int8_ranges(np.asarray(corpus[: min(n, 100_000), :64]))
    for i, (label, make) in enumerate(makers.items()):
        tbl = None
        for s in range(0, n, 100_000):
            batch = pa.table(make(s, min(s + 100_000, n)))
            if tbl is None:
                tbl = db.create_table(f"c{i}", data=batch)
            else:
                tbl.add(batch)
        sizes[label] = {"bytes": du(root / f"c{i}.lance"), "bytes_per_row": du(root / f"c{i}.lance") / n}
    shutil.rmtree(root, ignore_errors=True)
    return sizes


def markdown(result: dict) -> str:
    lines = []
    for st in result["stores"]:
        f = st["full_dim"]
        lines += [f"**{st['name']}** ({st['n']:,} x {st['d']}; top 10)", "",
                  "| search | first-stage bytes/vector | p50 ms (1 query) | p99 ms | QPS (batches of 64) | "
                  "recall@10 vs full-dim |", "| --- | --- | --- | --- | --- | --- |",
                  f"| full-dim float32 (dot) | {f['bytes_per_vector']} | {f['p50_ms']:.1f} | {f['p99_ms']:.1f} | "
                  f"{f['qps_batched']:.0f} | 1 |"]
        for c in st["configs"]:
            for kind, key, rec in (("funnel", "funnel", "recall@10_vs_full"),
                                   ("first stage only", "first_stage_only", "recall@10_first_stage_only")):
                t = c[key]
                label = (f"{c['precision']} {c['dim']}d + rescore top-{c['shortlist']}" if kind == "funnel"
                         else f"{c['precision']} {c['dim']}d, no rescoring")
                lines.append(f"| {label} | {c['prefix_bytes_per_vector']} | {t['p50_ms']:.1f} | {t['p99_ms']:.1f} | "
                             f"{t['qps_batched']:.0f} | {c[rec]:.3f} |")
        lines += ["", "| column | bytes on disk | bytes/row |", "| --- | --- | --- |"]
        for label, v in st["column_bytes"].items():
            lines.append(f"| {label} | {v['bytes']:,} | {v['bytes_per_row']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scifact", help="BEIR SciFact folder with embeddings/all-MiniLM-L6-v2")
    ap.add_argument("--synthetic", type=int, default=0, help="rows of the synthetic 384-dim table (0: skip)")
    ap.add_argument("--single", type=int, default=100, help="queries timed one at a time")
    ap.add_argument("--batched", type=int, default=256, help="queries timed in batches of 64 (QPS)")
    ap.add_argument("--configs", default=",".join(f"{p}:{m}:{s}" for p, m, s in CONFIGS),
                    help="precision:prefix_dim:shortlist, comma-separated")
    ap.add_argument("--out", default="results/funnel_speed")
    args = ap.parse_args()
    configs = [(c.split(":")[0], int(c.split(":")[1]), int(c.split(":")[2])) for c in args.configs.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_description(), "command": " ".join(sys.argv), "stores": [],
              "load_average_start": os.getloadavg()}
    if args.scifact:
        pre = load_precomputed(Path(args.scifact) / "embeddings" / "all-MiniLM-L6-v2")
        corpus, queries = pre.corpus, pre.queries
        result["stores"].append(run_store("scifact", corpus, queries[:300], out / "tables", args.single,
                                           args.batched, configs))
    if args.synthetic:
        corpus = synthetic(args.synthetic, 384, out / "synthetic.npy")
        rng = np.random.default_rng(1)
        q = np.asarray(corpus[rng.choice(len(corpus), 300, replace=False)])
        q = q + 0.05 * rng.standard_normal(q.shape).astype(np.float32)  # near-duplicates of stored rows
        result["stores"].append(run_store(f"synthetic-{args.synthetic}", corpus, q, out / "tables", args.single,
                                           args.batched, configs))
        del corpus
        os.unlink(out / "synthetic.npy")
    result["load_average_end"] = os.getloadavg()
    (out / "funnel_speed.json").write_text(json.dumps(result, indent=2))
    (out / "funnel_speed.md").write_text(markdown(result))
    print(f"wrote {out / 'funnel_speed.json'}")


if __name__ == "__main__":
    main()
