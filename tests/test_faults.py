"""Issue 14: every failure a user can cause is one ``error:`` line (never a traceback), bad files and
configs are refused with a reason, and outputs respect the umask and stay strict JSON."""

import errno
import hashlib
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from matryoshka_adaptor import AdaptorFileError, InputError, MatryoshkaAdaptor
from matryoshka_adaptor.cli import app
from matryoshka_adaptor.formats import read_embeddings, write_embeddings
from matryoshka_adaptor.inference import NumpyAdaptor

FAST = dict(steps=5, eval_every=5, progress=False, device="cpu")


def invoke(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def one_error_line(r, code: int = 2) -> str:
    """Assert the CLI failed with ``code`` and exactly one ``error:`` line, no traceback; return it."""
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == code, r.output
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "Traceback" not in r.output and (r.exception is None or isinstance(r.exception, SystemExit))
    return lines[0]


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def adaptor(tmp_path_factory):
    from conftest import clustered

    path = tmp_path_factory.mktemp("ad") / "adaptor"
    MatryoshkaAdaptor(dims=(4, 8), **FAST).fit(clustered(n=100, d=32)).save(path)
    return path


def copy_adaptor(src, dst):
    dst.mkdir()
    for name in ("config.json", "model.safetensors"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


# ------------------------------------------------------- tracebacks -> one line
def test_bad_files_given_to_the_cli_end_as_one_error_line(tmp_path, adaptor, corpus):
    np.save(tmp_path / "c.npy", corpus)
    (tmp_path / "q.tsv").write_text("query-id\tcorpus-id\tscore\nq0\t0\thigh\n")
    np.save(tmp_path / "qv.npy", corpus[:3])
    r = invoke("fit", tmp_path / "c.npy", "-o", tmp_path / "a1", "--queries", tmp_path / "qv.npy",
               "--qrels", tmp_path / "q.tsv", "-q")
    assert "'high' is not a number" in one_error_line(r)
    with open(tmp_path / "empty.npz", "wb") as f:
        np.savez(f)
    assert "holds no embedding array" in one_error_line(invoke("fit", tmp_path / "empty.npz", "-o", tmp_path / "a2"))
    (tmp_path / "ids.json").write_text("[1, 2, 3]")
    r = invoke("fit", tmp_path / "c.npy", "-o", tmp_path / "a3", "--ids", tmp_path / "ids.json")
    assert "needs an object" in one_error_line(r)
    write_embeddings(tmp_path / "c.parquet", corpus, [f"d{i}" for i in range(len(corpus))])
    data = (tmp_path / "c.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    r = invoke("transform", adaptor, tmp_path / "cut.parquet", tmp_path / "o.npy", "-q")
    assert "could not be read as Parquet" in one_error_line(r)
    (tmp_path / "folder.npy").mkdir()
    r = invoke("transform", adaptor, tmp_path / "c.npy", tmp_path / "folder.npy", "-q")
    assert "is a folder" in one_error_line(r)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    r = invoke("embed", "--model", "m", "--input", tmp_path / "latin1.txt", "--out", tmp_path / "e.npy",
               "--base-url", "http://127.0.0.1:9/v1", "--cache", tmp_path / "c.sqlite", "-q")
    assert "not valid UTF-8" in one_error_line(r)
    (tmp_path / "t.txt").write_text("hello\n")
    (tmp_path / "afile").write_text("x")
    r = invoke("embed", "--model", "m", "--input", tmp_path / "t.txt", "--out", tmp_path / "e.npy",
               "--base-url", "http://127.0.0.1:9/v1", "--cache", tmp_path / "afile" / "c.sqlite", "-q")
    assert "embedding cache" in one_error_line(r)
    r = invoke("fit", tmp_path / "c.npy", "-o", tmp_path / "a4", "--dims", "64", "-q")
    assert "64 is larger than the embedding dimension 32" in one_error_line(r)


def test_weights_with_wrong_inner_shapes_are_one_line(tmp_path, adaptor):
    from safetensors.numpy import load_file, save_file

    bad = copy_adaptor(adaptor, tmp_path / "bad")
    w = load_file(str(bad / "model.safetensors"))
    w["layers.0.bias"] = np.zeros(7, np.float32)
    save_file(w, str(bad / "model.safetensors"))
    assert "'layers.0.bias' has shape (7,)" in one_error_line(invoke("info", bad))


def test_a_full_disk_is_one_line_and_leaves_the_old_output(tmp_path, adaptor, corpus, monkeypatch):
    import matryoshka_adaptor.formats as formats

    np.save(tmp_path / "c.npy", corpus)
    write_embeddings(tmp_path / "o.parquet", corpus[:2])
    before = digest(tmp_path / "o.parquet")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".o.parquet.tmp"))

    monkeypatch.setattr(formats, "_to_table", full)
    r = invoke("transform", adaptor, tmp_path / "c.npy", tmp_path / "o.parquet", "-q")
    assert "the disk is full" in one_error_line(r)
    assert digest(tmp_path / "o.parquet") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npy", "o.parquet"]  # no temp left


def test_debug_flag_and_environment_show_the_traceback(tmp_path):
    r = invoke("--debug", "info", tmp_path / "nowhere")
    assert isinstance(r.exception, AdaptorFileError)
    r = invoke("info", tmp_path / "nowhere", env={"MA_DEBUG": "1"})
    assert isinstance(r.exception, AdaptorFileError)
    one_error_line(invoke("info", tmp_path / "nowhere", env={"MA_DEBUG": "0"}))


def test_the_installed_command_prints_one_line_and_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-m", "matryoshka_adaptor.cli", "info", str(tmp_path / "nowhere")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: ")


# ------------------------------------------------------- item 5 (inference half)
def test_nan_in_the_weights_is_refused_at_load(tmp_path, adaptor):
    from safetensors.numpy import load_file, save_file

    bad = copy_adaptor(adaptor, tmp_path / "nan")
    w = load_file(str(bad / "model.safetensors"))
    w["layers.1.weight"][0, 0] = np.nan
    save_file(w, str(bad / "model.safetensors"))
    with pytest.raises(AdaptorFileError, match="NaN or infinite"):
        MatryoshkaAdaptor.load(bad)
    assert "NaN or infinite" in one_error_line(invoke("transform", bad, tmp_path / "x.npy", tmp_path / "y.npy"))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow this test provokes on purpose
def test_numpy_adaptor_never_returns_non_finite_vectors():
    rng = np.random.default_rng(0)
    good = {"layers.0.weight": rng.standard_normal((8, 8)).astype(np.float32), "layers.0.bias": np.zeros(8, np.float32)}
    with pytest.raises(AdaptorFileError, match="NaN"):
        NumpyAdaptor({**good, "layers.0.bias": np.full(8, np.inf, np.float32)})
    huge = {"layers.0.weight": np.full((8, 8), 3e38, np.float32), "layers.0.bias": np.zeros(8, np.float32),
            "layers.1.weight": np.full((8, 8), 3e38, np.float32), "layers.1.bias": np.zeros(8, np.float32)}
    with pytest.raises(AdaptorFileError, match="NaN or infinite"):
        NumpyAdaptor(huge).apply(np.abs(rng.standard_normal((4, 8))).astype(np.float32) + 0.1, 8)


# ------------------------------------------------------- item 7
def test_npz_with_several_unnamed_arrays_is_an_error_naming_them(tmp_path, corpus):
    with open(tmp_path / "two.npz", "wb") as f:
        np.savez(f, queries=corpus[:5], docs=corpus)
    with pytest.raises(InputError, match=r"several arrays \['queries', 'docs'\].*--column"):
        read_embeddings(tmp_path / "two.npz")
    assert read_embeddings(tmp_path / "two.npz", column="docs")[0].shape == corpus.shape
    with open(tmp_path / "one.npz", "wb") as f:
        np.savez(f, vecs=corpus, ids=np.array([f"d{i}" for i in range(len(corpus))]))
    x, ids = read_embeddings(tmp_path / "one.npz")  # one array besides the ids: no ambiguity
    assert x.shape == corpus.shape and ids[1] == "d1"


# ------------------------------------------------------- item 8
def test_parquet_id_column_must_exist_and_ids_must_not_be_null(tmp_path, adaptor, corpus):
    write_embeddings(tmp_path / "c.parquet", corpus, [f"d{i}" for i in range(len(corpus))])
    r = invoke("transform", adaptor, tmp_path / "c.parquet", tmp_path / "o.parquet", "--id-column", "doc_id", "-q")
    assert "no id column 'doc_id'" in one_error_line(r)
    with pytest.raises(InputError, match="no id column"):
        read_embeddings(tmp_path / "c.parquet", id_column="doc_id")
    emb = pa.FixedSizeListArray.from_arrays(pa.array(corpus.reshape(-1)), corpus.shape[1])
    ids = pa.array([None if i == 7 else f"d{i}" for i in range(len(corpus))])
    pq.write_table(pa.table({"id": ids, "embedding": emb}), tmp_path / "nulls.parquet")
    with pytest.raises(InputError, match="null id.*row 7"):
        read_embeddings(tmp_path / "nulls.parquet")
    r = invoke("transform", adaptor, tmp_path / "nulls.parquet", tmp_path / "o.parquet", "-q")
    assert "null id" in one_error_line(r)
    assert not (tmp_path / "o.parquet").exists()


# ------------------------------------------------------- item 9
@pytest.mark.parametrize("field, value, message", [
    ("dims", [9999], "'dims' is \\[9999\\]"),
    ("dims", "64", "'dims' is '64'"),
    ("dims", [8, 4], "increasing"),
    ("dims", [], "non-empty"),
    ("dims", [True], "whole numbers"),
    ("format_version", 0, "'format_version' is 0"),
    ("format_version", -5, "'format_version' is -5"),
    ("format_version", True, "'format_version' is True"),
    ("format_version", "1", "'format_version' is '1'"),
    ("format_version", 99, "newer than this library supports"),
    ("format_version", None, "has no 'format_version'"),
    ("input_dim", "32", "'input_dim' is '32'"),
    ("architecture", {"hidden_dim": 32, "depth": 0, "rotation": True}, "architecture.depth"),
    ("architecture", {"hidden_dim": 32, "depth": 2, "rotation": "yes"}, "architecture.rotation"),
    ("architecture", {"hidden_dim": 24, "depth": 2, "rotation": True}, "has shape"),  # saved: 16
])
def test_a_loaded_config_is_checked(tmp_path, adaptor, field, value, message):
    bad = copy_adaptor(adaptor, tmp_path / "bad")
    config = json.loads((bad / "config.json").read_text())
    if value is None:
        del config[field]
    else:
        config[field] = value
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(AdaptorFileError, match=message):
        MatryoshkaAdaptor.load(bad)
    one_error_line(invoke("info", bad))


def test_weights_from_another_save_are_caught_by_the_digest(tmp_path, adaptor, corpus):
    other = tmp_path / "other"
    MatryoshkaAdaptor(dims=(4, 8), seed=1, **FAST).fit(corpus).save(other)
    mixed = copy_adaptor(adaptor, tmp_path / "mixed")
    (mixed / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(AdaptorFileError, match="not the ones config.json was saved with"):
        MatryoshkaAdaptor.load(mixed)


# ------------------------------------------------------- item 11
def test_fit_and_embed_check_the_output_before_the_work(tmp_path, corpus, monkeypatch):
    from fakes import ScriptedEmbeddingsServer

    np.save(tmp_path / "c.npy", corpus)
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(MatryoshkaAdaptor, "fit", lambda *a, **k: pytest.fail("trained before checking --out"))
    assert "is a file" in one_error_line(invoke("fit", tmp_path / "c.npy", "-o", tmp_path / "afile", "-q"))
    r = invoke("fit", tmp_path / "c.npy", "-o", tmp_path / "afile" / "ad", "-q")
    assert "is a file, not a folder" in one_error_line(r)
    (tmp_path / "t.txt").write_text("a\nb\n")
    with ScriptedEmbeddingsServer(lambda body: pytest.fail("paid before checking --out")) as url:
        for out in (tmp_path / "afile" / "v.npy", tmp_path / "dir.npy"):
            (tmp_path / "dir.npy").mkdir(exist_ok=True)
            r = invoke("embed", "--model", "m", "--base-url", url, "--input", tmp_path / "t.txt", "--out", out,
                       "--cache", tmp_path / "c.sqlite", "-q")
            one_error_line(r)


# ------------------------------------------------------- item 12
@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_outputs_respect_the_umask(tmp_path, adaptor, corpus, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        est = MatryoshkaAdaptor.load(adaptor)
        est.save(tmp_path / "ad")
        write_embeddings(tmp_path / "v.parquet", corpus)
        np.save(tmp_path / "c.npy", corpus)
        r = invoke("transform", adaptor, tmp_path / "c.npy", tmp_path / "o.npy", "-q")
        assert r.exit_code == 0, r.output
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ad").stat().st_mode) == dir_mode
    for path in (tmp_path / "ad" / "config.json", tmp_path / "ad" / "model.safetensors", tmp_path / "v.parquet",
                 tmp_path / "o.npy"):
        assert stat.S_IMODE(path.stat().st_mode) == file_mode, path


# ------------------------------------------------------- item 14
def test_json_outputs_are_strict_and_huge_vectors_normalise_exactly(tmp_path, adaptor, corpus):
    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON output"))

    est = MatryoshkaAdaptor.load(adaptor)
    est.fit_summary_ = {**est.fit_summary_, "best": float("-inf"), "nan": float("nan")}
    est.save(tmp_path / "ad")
    config = strict((tmp_path / "ad" / "config.json").read_text())
    assert config["training"]["summary"]["best"] is None
    r = invoke("info", tmp_path / "ad")
    assert r.exit_code == 0 and strict(r.output)["fit_summary"]["nan"] is None
    small = est.transform(corpus[:20], 8)
    for scale in (1e30, 1e-30, 3e38):
        np.testing.assert_allclose(est.transform(corpus[:20] * np.float32(scale), 8), small, atol=1e-5)
    with pytest.raises(InputError, match="beyond float32"):
        est.transform(corpus[:3].astype(np.float64) * 1e300, 8)
