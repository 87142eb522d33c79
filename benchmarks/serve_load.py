"""Load run against `matryoshka-adaptor serve`: requests/s and p50/p99 latency over loopback.

Starts the server as its own process (local all-MiniLM-L6-v2 + an adaptor), waits for
/health, then sends a bounded number of requests from this process with a fixed number
in flight, for each request size. Writes JSON and a markdown table naming the machine.

    python benchmarks/serve_load.py --adaptor my-adaptor/ --texts ../shared/data/scifact/queries.jsonl \
        --requests 400 --concurrency 8 --texts-per-request 1,16 --out results/serve-load
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from matryoshka_adaptor.embed.texts import read_texts
from matryoshka_adaptor.eval.benchmark import machine_description


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            return httpx.get(f"{base}/health", timeout=2).json()
        except httpx.TransportError:
            time.sleep(0.25)
    raise SystemExit("the server did not become healthy in time")


def run_load(url: str, model: str, texts: list[str], *, n_requests: int, per_request: int, concurrency: int,
             dim: int) -> dict:
    client = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=concurrency))
    rng = np.random.default_rng(0)

    def one(i: int) -> tuple[float, int]:
        batch = [texts[j] for j in rng.integers(0, len(texts), per_request)]
        t0 = time.perf_counter()
        r = client.post(f"{url}/embeddings", json={"model": model, "input": batch, "dimensions": dim})
        return time.perf_counter() - t0, r.status_code

    for i in range(min(8, n_requests)):  # warm-up: first forward passes, connection set-up
        one(i)
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n_requests)))
    wall = time.perf_counter() - start
    client.close()
    lat = np.array([r[0] for r in results]) * 1000
    ok = sum(1 for r in results if r[1] == 200)
    return {"texts_per_request": per_request, "requests": n_requests, "concurrency": concurrency, "ok": ok,
            "wall_s": round(wall, 2), "requests_per_s": round(n_requests / wall, 1),
            "texts_per_s": round(n_requests * per_request / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adaptor", required=True, help="adaptor folder fitted on all-MiniLM-L6-v2 vectors")
    ap.add_argument("--texts", required=True, help=".jsonl or .txt to draw request texts from")
    ap.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--texts-per-request", default="1,16")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    _, texts = read_texts(args.texts)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "matryoshka_adaptor.cli", "serve", "--adaptor", args.adaptor, "--local-model",
           args.model, "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        health = wait_healthy(base, proc)
        rows = [run_load(f"{base}/v1", health["model"], texts, n_requests=args.requests, per_request=int(n),
                         concurrency=args.concurrency, dim=args.dim)
                for n in args.texts_per_request.split(",")]
        health = httpx.get(f"{base}/health").json()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result = {"machine": machine_description(), "python": platform.python_version(), "model": args.model,
              "dim": args.dim, "server": " ".join(cmd[2:]), "model_calls": health["model_calls"],
              "requests_served": health["requests"], "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_load.json").write_text(json.dumps(result, indent=2))
    m = result["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, GPU: {m['gpu']}. Server and load generator on the same machine (loopback); "
             f"{args.model} on CPU, adaptor output {args.dim} dims.", "",
             "| texts/request | requests | in flight | req/s | texts/s | p50 ms | p99 ms | ok |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['texts_per_request']} | {r['requests']} | {r['concurrency']} | {r['requests_per_s']} | "
              f"{r['texts_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['ok']} |" for r in rows]
    lines += ["", f"The server made {health['model_calls']} model calls for {health['requests']} requests "
                  "(concurrent requests batched together)."]
    (out / "serve_load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
