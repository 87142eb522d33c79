"""Issue 14 item 10 and issue 15 item 9: SIGTERM is handled like Ctrl-C, a killed run's temporary files
are removed by the next run, and what a hard kill of `embed` can cost is bounded and reported."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from fakes import ScriptedEmbeddingsServer, embeddings_body
from matryoshka_adaptor import MatryoshkaAdaptor
from matryoshka_adaptor.cli import app
from matryoshka_adaptor.embed.cache import EmbeddingCache
from matryoshka_adaptor.embed.openai_api import OpenAICompatibleSource

FAST = dict(steps=5, eval_every=5, progress=False, device="cpu")


def cli_process(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "matryoshka_adaptor.cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def wait_for(condition, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def adaptor(tmp_path_factory):
    from conftest import clustered

    path = tmp_path_factory.mktemp("ad") / "adaptor"
    MatryoshkaAdaptor(dims=(4, 8), **FAST).fit(clustered(n=100, d=32)).save(path)
    return path


def test_sigterm_during_transform_leaves_no_temp_file_and_the_old_output(tmp_path, adaptor):
    x = np.random.default_rng(0).standard_normal((300_000, 32)).astype(np.float32)
    np.save(tmp_path / "big.npy", x)
    np.save(tmp_path / "out.npy", x[:2])
    old = (tmp_path / "out.npy").read_bytes()
    proc = cli_process("transform", adaptor, tmp_path / "big.npy", tmp_path / "out.npy", "--chunk-rows", "1", "-q")
    temps = lambda: [p for p in tmp_path.iterdir() if p.name.startswith(".out.npy.")]  # noqa: E731
    assert wait_for(lambda: temps() or proc.poll() is not None), "transform never started writing"
    assert proc.poll() is None, "transform finished before it could be interrupted; make the input bigger"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().startswith("error: interrupted") and "Traceback" not in err
    assert temps() == [] and (tmp_path / "out.npy").read_bytes() == old


def test_the_next_run_removes_temp_files_of_killed_runs_only(tmp_path, adaptor, corpus):
    np.save(tmp_path / "c.npy", corpus)
    stale = tmp_path / f".o.npy.{dead_pid()}.abc123.tmp.npy"
    stale.write_bytes(b"x" * 1000)
    live = tmp_path / ".o.npy.1.def456.tmp.npy"  # pid 1 is always alive: another run still writing
    live.write_bytes(b"y")
    r = CliRunner().invoke(app, ["transform", str(adaptor), str(tmp_path / "c.npy"), str(tmp_path / "o.npy"), "-q"])
    assert r.exit_code == 0, r.output
    assert not stale.exists() and live.exists()
    stale_dir = tmp_path / f".ad.{dead_pid()}.xyz.tmp"
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"z")
    MatryoshkaAdaptor.load(adaptor).save(tmp_path / "ad")
    assert not stale_dir.exists()


def slow_server(delay_s: float, dim: int = 8, log=None):
    state = {"in_flight": 0, "peak": 0, "lock": threading.Lock(), "delay": delay_s}

    def respond(body):
        with state["lock"]:
            state["in_flight"] += len(body["input"])
            state["peak"] = max(state["peak"], state["in_flight"])
        time.sleep(state["delay"])
        with state["lock"]:
            state["in_flight"] -= len(body["input"])
        rng = np.random.default_rng(len(body["input"]))
        return 200, embeddings_body(rng.standard_normal((len(body["input"]), dim)).tolist())

    return ScriptedEmbeddingsServer(respond), state


def test_in_flight_texts_never_exceed_the_budget(tmp_path):
    server, state = slow_server(0.05)
    with server as url:
        src = OpenAICompatibleSource("fake", base_url=url, api_key="k", cache_path=tmp_path / "c.sqlite",
                                     batch_size=4, concurrency=4, max_in_flight_texts=6)
        assert src.encode([f"t{i}" for i in range(40)], progress=False).shape == (40, 8)
    assert 0 < state["peak"] <= 6


def write_texts(path, n):
    path.write_text("".join(f"text number {i}\n" for i in range(n)))


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 130), (signal.SIGKILL, -9)])
def test_embed_after_sigterm_keeps_what_it_paid_for_and_after_kill_9_reports_the_loss(tmp_path, sig, code):
    write_texts(tmp_path / "t.txt", 40)
    server, state = slow_server(1.0)
    args = ["embed", "--model", "fake", "--input", tmp_path / "t.txt", "--out", tmp_path / "v.npy",
            "--cache", tmp_path / "c.sqlite", "--batch-size", "4", "--concurrency", "2", "--max-in-flight-texts", "8",
            "-q"]
    with server as url:
        proc = cli_process(*args, "--base-url", url)
        assert wait_for(lambda: len(server.requests) >= 2, timeout=60)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err
        if sig == signal.SIGTERM:
            assert err.strip().startswith("error: interrupted") and "Traceback" not in err
        with EmbeddingCache(tmp_path / "c.sqlite") as cache:
            kept = cache.count()
        sent = sum(len(b["input"]) for b in server.requests)
        state["delay"] = 0.0
        rerun = cli_process(*args, "--base-url", url)
        out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert np.load(tmp_path / "v.npy").shape == (40, 8)
    lost = sent - kept
    if sig == signal.SIGTERM:
        assert lost == 0 and kept >= 8  # answers already on their way were committed
    else:
        assert 0 < lost <= 8  # at most the in-flight budget is paid twice
    assert f"resumed: {lost} texts were in flight" in out and "at most 8 texts" in out
    assert json.loads((tmp_path / "v.npy.ids.json").read_text())["ids"][0] == "1"
