"""Speed and memory of fit and transform, next to what this machine's hardware allows.

    python benchmarks/speed.py --scifact ../shared/data/scifact --out results/speed

Measures, on whatever it runs on (the machine and commit are recorded):
  * the float32 matrix-multiply rate (numpy, and torch on the fit device) at the adaptor's shapes;
  * transform throughput, numpy and torch paths, in vectors/s and as a fraction of that GEMM rate;
  * unsupervised fit (default recipe) on SciFact MiniLM and on synthetic 100k x 768 and
    1M x 768 corpora, with neighbour mining and training reported apart; supervised fit on SciFact;
  * peak RSS of `matryoshka-adaptor transform` streaming a large .npy and a Parquet file, in a
    child process, next to the file size.
Writes speed.json and speed.md into --out. Sizes are options: --sizes 100000 for a quick run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from matryoshka_adaptor import MatryoshkaAdaptor
from matryoshka_adaptor.eval.benchmark import machine_description
from matryoshka_adaptor.formats import write_embeddings
from matryoshka_adaptor.inference import NumpyAdaptor


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def best_time(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def gemm_gflops(rows: int, k: int, n: int, backend: str = "numpy", device: str = "cpu") -> float:
    """Achieved float32 GFLOP/s of a (rows x k) @ (k x n) product."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((rows, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    if backend == "torch":
        import torch

        ta, tb = torch.from_numpy(a).to(device), torch.from_numpy(b).to(device)

        def run():
            (ta @ tb).sum().item()
    else:
        def run():
            a @ b
    return 2 * rows * k * n / best_time(run) / 1e9


def random_adaptor(d: int, seed: int = 0) -> MatryoshkaAdaptor:
    """An adaptor of the default architecture with random weights (speed does not depend on training)."""
    est = MatryoshkaAdaptor(dims=(64, d), steps=0, progress=False, device="cpu", seed=seed)
    x = np.random.default_rng(seed).standard_normal((max(2 * d, 512), d)).astype(np.float32)
    est.fit(x)  # steps=0: PCA rotation and zero last layer; give the last layer weights so it does work
    rng = np.random.default_rng(seed)
    for key in ("layers.1.weight", "layers.1.bias"):
        est.weights_[key] = (0.01 * rng.standard_normal(est.weights_[key].shape)).astype(np.float32)
    est._numpy = None
    return est


def transform_speed(d: int, n: int, dim: int, device: str) -> dict:
    est = random_adaptor(d)
    x = np.random.default_rng(1).standard_normal((n, d)).astype(np.float32)
    np_adaptor = NumpyAdaptor(est.weights_)
    h = est.hidden_dim_
    # multiply-adds per vector in the numpy path: fused first layer (d x h), rotation and last layer cut to dim
    flops = 2 * (d * h + d * dim + h * dim)
    t_np = best_time(lambda: np_adaptor.apply_chunked(x, dim))
    row = {"d": d, "dim": dim, "n": n, "numpy_threads": np_adaptor.n_threads, "numpy_vectors_per_s": round(n / t_np),
           "numpy_gflops": round(n * flops / t_np / 1e9, 1)}
    gemm = gemm_gflops(8192, d, h)
    row["numpy_gemm_gflops"] = round(gemm, 1)
    row["numpy_fraction_of_gemm"] = round(row["numpy_gflops"] / gemm, 2)
    import torch

    net = est.to_torch().to(device).eval()
    xt = torch.from_numpy(x).to(device)

    def torch_run():
        with torch.inference_mode():
            for s in range(0, n, 65536):
                out = net(xt[s : s + 65536])[0][:, :dim]
                torch.nn.functional.normalize(out, dim=-1)
            if device != "cpu":
                torch.cuda.synchronize()

    t_torch = best_time(torch_run)
    torch_flops = 2 * (d * d + d * h + h * d)  # the module computes the full forward
    row.update({"torch_device": device, "torch_vectors_per_s": round(n / t_torch),
                "torch_gflops": round(n * torch_flops / t_torch / 1e9, 1),
                "torch_gemm_gflops": round(gemm_gflops(65536, d, h, "torch", device), 1)})
    row["torch_fraction_of_gemm"] = round(row["torch_gflops"] / row["torch_gemm_gflops"], 2)
    return row


def fit_timing(est: MatryoshkaAdaptor, *args, **kwargs) -> dict:
    t = time.perf_counter()
    est.fit(*args, **kwargs)
    wall = time.perf_counter() - t
    s = est.fit_summary_
    steps = s["unsupervised"]["steps_run"] + s.get("supervised", {}).get("steps_run", 0)
    train = s["total_seconds"] - s["mining_seconds"]
    return {"wall_s": round(wall, 2), "prepare_and_mine_s": round(s["mining_seconds"], 2),
            "train_s": round(train, 2), "steps": steps, "ms_per_step": round(1000 * train / max(steps, 1), 2),
            "n_fit_vectors": s["n_fit_vectors"], "neighbor_search": s["neighbor_search"], "device": s["device"]}


def synthetic_corpus(path: Path, n: int, d: int, seed: int = 0, chunk: int = 100_000) -> Path:
    """Clustered unit vectors in a low-rank subspace plus noise, written chunk by chunk as .npy."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, 64)))[0].astype(np.float32)
    centres = rng.standard_normal((1000, 64)).astype(np.float32) * 2
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        z = centres[rng.integers(0, len(centres), m)] + rng.standard_normal((m, 64), dtype=np.float32)
        x = z @ basis.T + 0.3 * rng.standard_normal((m, d), dtype=np.float32) / np.sqrt(d)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    del out
    return path


# VmHWM (the peak RSS of this process's own address space) rather than ru_maxrss, which Linux
# carries over from the parent through fork + exec and so would report the benchmark's own size.
_CHILD = """
import sys
from matryoshka_adaptor.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
    print("PEAK_RSS_KIB", hwm, file=sys.stderr)
"""


def child_peak_rss(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of `matryoshka-adaptor ARGS` run in its own process."""
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CHILD, *args], check=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    kib = [int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("PEAK_RSS_KIB")][-1]
    return wall, kib / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scifact", default="../shared/data/scifact", help="BEIR SciFact folder with embeddings/")
    ap.add_argument("--sizes", default="100000,1000000", help="synthetic corpus sizes (768 dims)")
    ap.add_argument("--device", default="auto", help="fit / torch transform device: auto, cpu, cuda")
    ap.add_argument("--work", default=None, help="scratch folder for the large files (default: OUT/work)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from matryoshka_adaptor.fitting import resolve_device

    device = resolve_device(args.device)
    out = Path(args.out)
    work = Path(args.work) if args.work else out / "work"
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": machine_description(), "commit": commit(), "device": device, "fit": {},
                    "transform": [], "memory": []}
    print(f"machine: {result['machine']}, device {device}, commit {result['commit']}", flush=True)
    print(f"cores: {result['machine']['cores']} (numpy transform threads: {NumpyAdaptor({'layers.0.weight': np.zeros((1, 1)), 'layers.0.bias': np.zeros(1)}).n_threads})", flush=True)

    for d in (384, 768):
        row = transform_speed(d, 200_000, 64, device)
        result["transform"].append(row)
        print("transform", row, flush=True)

    sci = Path(args.scifact)
    emb = sci / "embeddings" / "all-MiniLM-L6-v2"
    if (emb / "corpus.npy").is_file():
        from matryoshka_adaptor.eval.datasets import load_beir
        from matryoshka_adaptor.embed.sources import load_precomputed

        pre = load_precomputed(emb)
        result["fit"]["scifact_unsupervised"] = fit_timing(
            MatryoshkaAdaptor(seed=0, progress=False, device=device), pre.corpus)
        print("fit scifact unsup", result["fit"]["scifact_unsupervised"], flush=True)
        ds = load_beir(sci)
        train = ds.qrels["train"]
        qpos = {q: i for i, q in enumerate(pre.query_ids)}
        tq = [q for q in train if q in qpos]
        result["fit"]["scifact_supervised"] = fit_timing(
            MatryoshkaAdaptor(seed=0, progress=False, device=device), pre.corpus,
            pre.queries[[qpos[q] for q in tq]], {q: train[q] for q in tq}, corpus_ids=pre.corpus_ids, query_ids=tq)
        print("fit scifact sup", result["fit"]["scifact_supervised"], flush=True)
    else:
        print(f"SciFact embeddings not found under {emb}: skipping the SciFact fits", flush=True)

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    for n in sizes:
        path = work / f"synthetic-{n}x768.npy"
        if not path.is_file():
            synthetic_corpus(path, n, 768)
        x = np.load(path, mmap_mode="r")  # fit samples max_fit_vectors rows; the file is never loaded whole
        key = f"synthetic_{n}x768_unsupervised"
        result["fit"][key] = fit_timing(MatryoshkaAdaptor(seed=0, progress=False, device=device), x)
        print("fit", key, result["fit"][key], flush=True)

    if sizes:  # memory: stream the largest file through the CLI transform in a child process
        n = max(sizes)
        path = work / f"synthetic-{n}x768.npy"
        ad = work / "adaptor-768"
        random_adaptor(768).save(ad)
        cli = ["transform", str(ad)]
        pq_path = work / f"synthetic-{n}x768.parquet"
        if not pq_path.is_file():
            x = np.load(path, mmap_mode="r")
            import pyarrow.parquet as pq

            from matryoshka_adaptor.formats import _to_table

            with pq.ParquetWriter(pq_path, _to_table(np.asarray(x[:1]), None).schema) as writer:
                for s in range(0, n, 65536):
                    writer.write_table(_to_table(np.asarray(x[s : s + 65536]), None), row_group_size=65536)
        for src, dst in ((pq_path, work / "out64.parquet"), (path, work / "out64.npy")):
            wall, rss = child_peak_rss(cli + [str(src), str(dst), "--dim", "64", "-q"])
            row = {"input": src.name, "rows": n, "input_mib": round(src.stat().st_size / 2**20),
                   "output_mib": round(dst.stat().st_size / 2**20), "wall_s": round(wall, 1),
                   "peak_rss_mib": round(rss), "vectors_per_s": round(n / wall)}
            result["memory"].append(row)
            print("memory", row, flush=True)

    (out / "speed.json").write_text(json.dumps(result, indent=2))
    (out / "speed.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, GPU: {m['gpu']}; "
             f"fit device: {r['device']}; commit {r['commit']}.", "",
             "| fit | wall s | prepare + mine s | train s | steps | ms/step | fit vectors | mining |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, f in r["fit"].items():
        lines.append(f"| {name} | {f['wall_s']} | {f['prepare_and_mine_s']} | {f['train_s']} | {f['steps']} | "
                     f"{f['ms_per_step']} | {f['n_fit_vectors']} | {f['neighbor_search']} |")
    lines += ["", "| transform d→64 | numpy vec/s | numpy GFLOP/s | GEMM GFLOP/s | fraction | torch vec/s | "
                  "torch GFLOP/s | torch GEMM | fraction |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for t in r["transform"]:
        lines.append(f"| {t['d']} ({t['n']} vectors) | {t['numpy_vectors_per_s']} | {t['numpy_gflops']} | "
                     f"{t['numpy_gemm_gflops']} | {t['numpy_fraction_of_gemm']} | {t['torch_vectors_per_s']} | "
                     f"{t['torch_gflops']} | {t['torch_gemm_gflops']} | {t['torch_fraction_of_gemm']} |")
    if r["memory"]:
        lines += ["", "| streamed transform (CLI, d=768 → 64) | rows | input MiB | peak RSS MiB | wall s | vec/s |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for mrow in r["memory"]:
            lines.append(f"| {mrow['input']} | {mrow['rows']} | {mrow['input_mib']} | {mrow['peak_rss_mib']} | "
                         f"{mrow['wall_s']} | {mrow['vectors_per_s']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
