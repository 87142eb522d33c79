import json

import numpy as np
import pyarrow.parquet as pq
from typer.testing import CliRunner

from matryoshka_adaptor.cli import app
from matryoshka_adaptor.formats import write_embeddings

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_fit_transform_info_round_trip(tmp_path, corpus):
    np.save(tmp_path / "corpus.npy", corpus)
    r = invoke("fit", tmp_path / "corpus.npy", "--out", tmp_path / "ad", "--dims", "4,8,16", "--steps", "20", "-q",
               "--device", "cpu")
    assert r.exit_code == 0, r.output
    r = invoke("transform", tmp_path / "ad", tmp_path / "corpus.npy", tmp_path / "small.npy", "--dim", "8", "-q")
    assert r.exit_code == 0, r.output
    small = np.load(tmp_path / "small.npy")
    assert small.shape == (len(corpus), 8)
    np.testing.assert_allclose(np.linalg.norm(small, axis=1), 1, atol=1e-5)
    r = invoke("info", tmp_path / "ad")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["dims"] == [4, 8, 16] and info["input_dim"] == 32


def test_parquet_transform_keeps_ids(tmp_path, corpus):
    write_embeddings(tmp_path / "c.parquet", corpus, [f"d{i}" for i in range(len(corpus))])
    assert invoke("fit", tmp_path / "c.parquet", "-o", tmp_path / "ad", "--dims", "8", "--steps", "5", "-q").exit_code == 0
    r = invoke("transform", tmp_path / "ad", tmp_path / "c.parquet", tmp_path / "o.parquet", "-d", "8", "-q")
    assert r.exit_code == 0, r.output
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.column("id").to_pylist()[:3] == ["d0", "d1", "d2"]


def test_cli_errors_are_clear(tmp_path, corpus):
    np.save(tmp_path / "c.npy", corpus)
    r = invoke("fit", tmp_path / "c.npy", "--out", tmp_path / "ad", "--dims", "8,999", "-q")
    assert r.exit_code == 2 and "999 is larger than the embedding dimension 32" in r.output
    r = invoke("info", tmp_path / "nowhere")
    assert r.exit_code == 2 and "does not exist" in r.output


def test_help_has_examples():
    for cmd in ("fit", "transform", "info", "benchmark"):
        r = invoke(cmd, "--help")
        assert r.exit_code == 0 and "Example:" in r.output
