"""Load, fairness and soak run against `matryoshka-adaptor serve` (loopback only, bounded in count and time).

Starts the server as its own process (the packaged all-MiniLM-L6-v2, an adaptor if given),
then, in one run:

1. **in-process baseline**: this process encodes the same 16-text requests' texts with the
   same model in batches (server idle), and times a lone 16-text call;
2. **throughput**: ``--clients`` concurrent clients each sending 16-text requests
   (``--throughput-requests`` in all); texts/s as a fraction of the baseline, p50/p99,
   and the server's batching counters (texts per model call, call time, queue wait);
3. baseline again (the fraction uses the mean of both baselines);
4. **head of line**: one-text requests from 4 clients alone, then while one large request
   (``--big-texts`` corpus texts) runs: p50/p99 of the small ones;
5. **soak**: ``--soak-requests`` mixed requests (1-16 short texts, some long ones, now and
   then 128 texts) with 8 in flight; the server's RSS sampled every 100 requests.

    python benchmarks/serve_load.py --data $MA_DATA_DIR/scifact --out results/serve-load

Writes ``serve_load.json`` and ``serve_load.md`` (naming the machine) to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from matryoshka_adaptor.embed.texts import read_texts
from matryoshka_adaptor.eval.benchmark import machine_description

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            r = httpx.get(f"{base}/health", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise SystemExit("the server did not become healthy in time")


def batching(base: str) -> dict:
    """The server's batching counters (an older server without them: its request-level ones)."""
    h = httpx.get(f"{base}/health").json()
    return h.get("batching") or {"model_calls": h["model_calls"], "texts_embedded": h["texts"],
                                 "mean_call_ms": None, "mean_queue_wait_ms": None}


def pct(values, q) -> float:
    return round(float(np.percentile(np.asarray(values) * 1000, q)), 1) if len(values) else float("nan")


async def run_clients(url: str, model: str, make_body, *, n_requests: int, clients: int, time_limit_s: float,
                      on_done=None) -> dict:
    """``clients`` tasks share ``n_requests`` requests (stops early at ``time_limit_s``)."""
    lat, statuses, texts = [], [], 0
    counter = iter(range(n_requests))
    stop_at = time.perf_counter() + time_limit_s
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as client:
        async def one_client():
            nonlocal texts
            for i in counter:
                if time.perf_counter() > stop_at:
                    return
                body = make_body(i)
                t0 = time.perf_counter()
                r = await client.post(f"{url}/embeddings", json={"model": model, **body})
                lat.append(time.perf_counter() - t0)
                statuses.append(r.status_code)
                texts += len(body["input"]) if isinstance(body["input"], list) else 1
                if on_done is not None:
                    on_done(len(statuses))

        t0 = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"requests": len(statuses), "ok": statuses.count(200), "wall_s": round(wall, 2),
            "texts_per_s": round(texts / wall, 1), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}


def in_process_baseline(model, texts: list[str], per_request: int) -> dict:
    t0 = time.perf_counter()
    model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    wall = time.perf_counter() - t0
    calls = []
    for i in range(10):
        chunk = texts[i * per_request : (i + 1) * per_request]
        t1 = time.perf_counter()
        model.encode(chunk, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        calls.append(time.perf_counter() - t1)
    return {"texts": len(texts), "texts_per_s": round(len(texts) / wall, 1),
            "lone_call_ms_median": round(1000 * float(np.median(calls)), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a BEIR folder with queries.jsonl and corpus.jsonl (e.g. scifact)")
    ap.add_argument("--adaptor", default=None, help="adaptor folder fitted on all-MiniLM-L6-v2 vectors (optional)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--texts-per-request", type=int, default=16)
    ap.add_argument("--throughput-requests", type=int, default=192)
    ap.add_argument("--big-texts", type=int, default=1024)
    ap.add_argument("--soak-requests", type=int, default=5000)
    ap.add_argument("--phase-time-limit-s", type=float, default=240)
    ap.add_argument("--server-env", action="append", default=[], help="NAME=VALUE for the server process")
    ap.add_argument("--server-src", default=None, help="PYTHONPATH for the server (compare another checkout)")
    ap.add_argument("--server-args", default="", help="extra `serve` options, e.g. '--batch-window-ms 0'")
    ap.add_argument("--phases", default="throughput,hol,soak")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    phases = set(args.phases.split(","))

    _, queries = read_texts(Path(args.data) / "queries.jsonl")
    _, corpus = read_texts(Path(args.data) / "corpus.jsonl")
    rng = np.random.default_rng(0)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "matryoshka_adaptor.cli", "serve", "--local-model", MODEL, "--port", str(port),
           "--log-level", "warning", *args.server_args.split()]
    if args.adaptor:
        cmd += ["--adaptor", args.adaptor]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **dict(kv.split("=", 1) for kv in args.server_env)}
    if args.server_src:
        env["PYTHONPATH"] = args.server_src
    proc = subprocess.Popen(cmd, env=env)
    result: dict = {"machine": machine_description(), "python": platform.python_version(), "model": MODEL,
                    "server": " ".join(cmd[2:]), "server_env": args.server_env, "server_src": args.server_src}
    try:
        health = wait_healthy(base, proc)
        name = health["model"]
        url = f"{base}/v1"
        result["rss_mb_idle"] = round(rss_mb(proc.pid), 1)
        per = args.texts_per_request

        if "throughput" in phases:
            from sentence_transformers import SentenceTransformer

            from matryoshka_adaptor.embed.sources import resolve_model_path

            local = SentenceTransformer(resolve_model_path(MODEL), device="cpu")
            n = args.throughput_requests
            req_texts = [[queries[j] for j in rng.integers(0, len(queries), per)] for _ in range(n)]
            flat = [t for r in req_texts for t in r]
            local.encode(flat[:64], show_progress_bar=False)  # warm-up
            before = in_process_baseline(local, flat, per)
            asyncio.run(run_clients(url, name, lambda i: {"input": req_texts[i % n]}, n_requests=args.clients,
                                    clients=args.clients, time_limit_s=60))  # warm-up
            h0 = batching(base)
            load = asyncio.run(run_clients(url, name, lambda i: {"input": req_texts[i]}, n_requests=n,
                                           clients=args.clients, time_limit_s=args.phase_time_limit_s))
            h1 = batching(base)
            after = in_process_baseline(local, flat, per)
            baseline = (before["texts_per_s"] + after["texts_per_s"]) / 2
            calls = h1["model_calls"] - h0["model_calls"]
            load.update(clients=args.clients, texts_per_request=per,
                        fraction_of_in_process=round(load["texts_per_s"] / baseline, 3),
                        server_model_calls=calls,
                        server_texts_per_call=round((h1["texts_embedded"] - h0["texts_embedded"]) / max(calls, 1), 1),
                        server_mean_call_ms_all=h1["mean_call_ms"], server_mean_queue_wait_ms_all=h1["mean_queue_wait_ms"])
            result["throughput"] = {"in_process_before": before, "in_process_after": after, "server": load}
            del local

        if "hol" in phases:
            small = lambda i: {"input": queries[i % len(queries)]}  # noqa: E731
            alone = asyncio.run(run_clients(url, name, small, n_requests=80, clients=4, time_limit_s=60))
            big_texts = [t[:200] for t in corpus[: args.big_texts]]

            async def with_big():
                async with httpx.AsyncClient(timeout=600) as c:
                    t0 = time.perf_counter()
                    big_task = asyncio.create_task(c.post(f"{url}/embeddings", json={"model": name, "input": big_texts}))
                    await asyncio.sleep(0.5)
                    small_runs = []
                    while not big_task.done():
                        small_runs.append(await run_clients(url, name, small, n_requests=20, clients=4,
                                                            time_limit_s=60))
                    big = await big_task
                    return {"big_status": big.status_code, "big_s": round(time.perf_counter() - t0, 2),
                            "big_tokens": big.json().get("usage", {}).get("prompt_tokens"), "small": small_runs}

            during = asyncio.run(with_big())
            lat_runs = during.pop("small")
            during["small_requests"] = sum(r["requests"] for r in lat_runs)
            during["small_ok"] = sum(r["ok"] for r in lat_runs)
            during["small_p50_ms_worst_run"] = max(r["p50_ms"] for r in lat_runs)
            during["small_p99_ms_worst_run"] = max(r["p99_ms"] for r in lat_runs)
            result["head_of_line"] = {"small_alone": alone, "during_big": during, "big_texts": len(big_texts)}

        if "soak" in phases:
            long_texts = [t for t in corpus if len(t) > 600][:500]
            samples = []

            def body(i):
                r = np.random.default_rng(i)
                if i % 97 == 0:
                    return {"input": [queries[j] for j in r.integers(0, len(queries), 128)]}
                k = int(r.integers(1, 17))
                pool = long_texts if i % 5 == 0 else queries
                return {"input": [pool[j][:800] for j in r.integers(0, len(pool), k)]}  # within the 256-token window

            def sample(done):
                if done % 100 == 0:
                    samples.append((done, round(rss_mb(proc.pid), 1)))

            soak = asyncio.run(run_clients(url, name, body, n_requests=args.soak_requests, clients=8,
                                           time_limit_s=args.phase_time_limit_s, on_done=sample))
            warm_at = max(1, len(samples) // 10)
            rss = [s[1] for s in samples]
            soak.update(rss_samples=samples, rss_mb_warm=rss[warm_at - 1] if rss else None,
                        rss_mb_peak=max(rss) if rss else None, rss_mb_end=rss[-1] if rss else None)
            result["soak"] = soak
        result["health_end"] = httpx.get(f"{base}/health").json()
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_load.json").write_text(json.dumps(result, indent=2))
    m = result["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, GPU: {m['gpu']}; server and load "
             f"generator on the same machine (loopback). Server: `{result['server']}` {args.server_env or ''}", ""]
    if "throughput" in result:
        t = result["throughput"]
        s = t["server"]
        lines += [f"Throughput, {s['clients']} clients x {s['texts_per_request']} texts/request, {s['requests']} "
                  f"requests: {s['texts_per_s']} texts/s = {s['fraction_of_in_process']} of in-process batched encode "
                  f"({t['in_process_before']['texts_per_s']} / {t['in_process_after']['texts_per_s']} texts/s before/after); "
                  f"p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms; {s['server_texts_per_call']} texts per model call; "
                  f"lone 16-text call in-process {t['in_process_before']['lone_call_ms_median']} ms.", ""]
    if "head_of_line" in result:
        h = result["head_of_line"]
        d = h["during_big"]
        lines += [f"Head of line: 1-text requests alone p50 {h['small_alone']['p50_ms']} / p99 {h['small_alone']['p99_ms']} ms; "
                  f"while a {h['big_texts']}-text request ({d['big_tokens']} tokens, {d['big_s']} s) ran: "
                  f"{d['small_requests']} small requests, worst p50 {d['small_p50_ms_worst_run']} / "
                  f"p99 {d['small_p99_ms_worst_run']} ms.", ""]
    if "soak" in result:
        s = result["soak"]
        lines += [f"Soak: {s['requests']} mixed requests ({s['ok']} ok) in {s['wall_s']} s; server RSS idle "
                  f"{result['rss_mb_idle']} MB, warm {s['rss_mb_warm']} MB, peak {s['rss_mb_peak']} MB, "
                  f"end {s['rss_mb_end']} MB.", ""]
    (out / "serve_load.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
