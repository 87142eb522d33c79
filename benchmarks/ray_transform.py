"""`transform --engine ray` on a local Ray with N workers vs the single-process transform, on synthetic shards.

    python benchmarks/ray_transform.py --rows 1000000 --d 384 --shards 8 --workers 2 --out results/ray

Writes --shards Parquet shards of clustered unit vectors (speed.py's generator), an adaptor of the
default shape with random weights, then times (1) the single-process streamed transform of every
shard (`formats.transform_file`, the local engine) and (2) `transform_parquet_shards` on a local
Ray instance with --workers CPUs (start-up included and reported apart), checks both outputs agree,
and writes ray.json. With ``--index PRECISION`` it also fills a LanceDB funnel table (prefix of
--dim dims at that precision + full vectors) from the same shards, once with the local ``index add``
and once with ``add_parquet_shards_to_index`` on Ray, and checks both tables hold the same rows.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np

from matryoshka_adaptor.eval.benchmark import machine_description
from matryoshka_adaptor.formats import read_embeddings, transform_file, write_embeddings

_spec = importlib.util.spec_from_file_location("speed", Path(__file__).with_name("speed.py"))
speed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(speed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--index", default=None, help="also time filling a funnel table: float32, int8 or binary")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    src = out / f"in-{args.rows}x{args.d}"
    per = -(-args.rows // args.shards)
    if not src.is_dir():
        out.mkdir(parents=True, exist_ok=True)
        npy = out / "tmp.npy"
        speed.synthetic_corpus(npy, args.rows, args.d)
        x = np.load(npy, mmap_mode="r")
        for i, s in enumerate(range(0, args.rows, per)):
            part = np.asarray(x[s : s + per])
            write_embeddings(src / f"part-{i:04d}.parquet", part, [f"doc{j}" for j in range(s, s + len(part))])
        npy.unlink()
    est = speed.random_adaptor(args.d)
    est.save(out / "adaptor")
    res = {"machine": machine_description(), "commit": speed.commit(), "rows": args.rows, "d": args.d,
           "dim": args.dim, "shards": args.shards, "workers": args.workers}
    adaptor = est.numpy_adaptor()
    t = time.perf_counter()
    for p in sorted(src.glob("*.parquet")):
        transform_file(p, out / "local" / p.name, lambda c, o: adaptor.apply(c, args.dim, offset=o), args.dim,
                       chunk_rows=8192)
    res["local_single_process_s"] = round(time.perf_counter() - t, 1)
    print(res, flush=True)

    import ray

    from matryoshka_adaptor.distributed.ray_transform import transform_parquet_shards

    t = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    res["ray_start_s"] = round(time.perf_counter() - t, 1)
    report = transform_parquet_shards(est, src, out / "ray", dim=args.dim, num_workers=args.workers)
    res["ray_transform_s"] = round(report.seconds, 1)
    res["ray_rows_per_s"] = round(args.rows / report.seconds)
    t = time.perf_counter()
    again = transform_parquet_shards(est, src, out / "ray", dim=args.dim, num_workers=args.workers)
    res["ray_rerun_all_skipped_s"] = round(time.perf_counter() - t, 2)
    assert len(again.skipped) == args.shards
    if args.index:
        res.update(time_index_fill(est, src, out, args))
    ray.shutdown()
    a, ia = read_embeddings(out / "local" / "part-0000.parquet")
    b, ib = read_embeddings(out / "ray" / "part-0000.parquet")
    res["max_abs_diff_vs_local"] = float(np.abs(a - b).max())
    res["ids_equal"] = ia == ib
    print(res, flush=True)
    (out / "ray.json").write_text(json.dumps(res, indent=2))


def time_index_fill(est, src: Path, out: Path, args) -> dict:
    """Local `index add` vs `add_parquet_shards_to_index` on the (already started) Ray instance."""
    import shutil

    from matryoshka_adaptor.distributed.ray_index import add_parquet_shards_to_index
    from matryoshka_adaptor.index.funnel import FunnelIndex, iter_vector_file

    calibration = read_embeddings(sorted(src.glob("*.parquet"))[0])[0][:20000]
    res = {}
    for name in ("index_local", "index_ray"):
        shutil.rmtree(out / name, ignore_errors=True)
        index = FunnelIndex.create(out / name, adaptor=est, dim=args.dim, precision=args.index,
                                   calibration=calibration)
        t = time.perf_counter()
        if name == "index_local":
            for p in sorted(src.glob("*.parquet")):
                index.add(iter_vector_file(p, batch_rows=8192)[1])
        else:
            add_parquet_shards_to_index(out / name, src, adaptor=est, num_workers=args.workers)
        res[f"{name}_s"] = round(time.perf_counter() - t, 1)
        print(name, res[f"{name}_s"], flush=True)
    a = FunnelIndex.open(out / "index_local", adaptor=est).table
    b = FunnelIndex.open(out / "index_ray", adaptor=est).table
    res["index_rows"] = [a.count_rows(), b.count_rows()]
    head = [t.search().select(["id", "prefix"]).limit(1000).to_arrow().sort_by("id") for t in (a, b)]
    res["index_first_rows_equal"] = head[0].equals(head[1])
    return res


if __name__ == "__main__":
    main()
