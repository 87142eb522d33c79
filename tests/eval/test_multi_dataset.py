import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import clustered
from matryoshka_adaptor import MatryoshkaAdaptor
from matryoshka_adaptor.cli import app
from matryoshka_adaptor.errors import InputError
from matryoshka_adaptor.eval.benchmark import BenchmarkConfig
from matryoshka_adaptor.eval.dataset_vectors import find_vectors
from matryoshka_adaptor.eval.metrics import evaluate_run
from matryoshka_adaptor.eval.multi_dataset import expand_datasets, run_multi_benchmark
from matryoshka_adaptor.eval.retrieval import retrieve

NAME = "toy-model"
PARAMS = {"steps": 10, "supervised_steps": 10, "eval_every": 5, "device": "cpu"}


def write_beir(root, prefix, corpus, queries, src, n_train, vectors=True):
    """A BEIR folder with ids ``<prefix>-d<i>`` / ``<prefix>-q<i>``; query i is relevant to document src[i]."""
    (root / "qrels").mkdir(parents=True)
    docs = [f"{prefix}-d{i}" for i in range(len(corpus))]
    qids = [f"{prefix}-q{i}" for i in range(len(queries))]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "title": "", "text": d}) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": q}) + "\n" for q in qids))
    for split, rows in (("train", range(n_train)), ("test", range(n_train, len(queries)))):
        (root / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"{qids[i]}\t{docs[src[i]]}\t1\n" for i in rows))
    if vectors:
        emb = root / "embeddings" / NAME
        emb.mkdir(parents=True)
        np.save(emb / "corpus.npy", corpus)
        np.save(emb / "queries.npy", queries)
        (emb / "ids.json").write_text(json.dumps({"corpus_ids": docs, "query_ids": qids}))
    return docs, qids


def make_family(root, n_docs=120, n_train=40, n_test=30, d=24):
    """Two 'languages' aa and bb (a shared random rotation apart) and a pool of both without vectors."""
    rng = np.random.default_rng(0)
    base = clustered(n=n_docs, d=d, seed=3)
    rot = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
    n_q = n_train + n_test
    src = rng.choice(n_docs, n_q, replace=False)
    parts = {}
    for prefix, corpus in (("aa", base), ("bb", (base @ rot * 0.3 + base * 0.7))):
        corpus = (corpus / np.linalg.norm(corpus, axis=1, keepdims=True)).astype(np.float32)
        queries = corpus[src] + 0.4 * rng.standard_normal((n_q, d)).astype(np.float32)
        queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
        parts[prefix] = (corpus, queries, *write_beir(root / prefix, prefix, corpus, queries, src, n_train))
    # pool: both corpora, every query relevant to its document in both languages; no vectors of its own
    pool = root / "pool"
    (pool / "qrels").mkdir(parents=True)
    docs = parts["aa"][2] + parts["bb"][2]
    qids = parts["aa"][3] + parts["bb"][3]
    (pool / "corpus.jsonl").write_text("".join(json.dumps({"_id": x, "title": "", "text": x}) + "\n" for x in docs))
    (pool / "queries.jsonl").write_text("".join(json.dumps({"_id": x, "text": x}) + "\n" for x in qids))
    for split, rows in (("train", range(n_train)), ("test", range(n_train, n_q))):
        (pool / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
            f"{p}-q{i}\t{lang}-d{src[i]}\t1\n" for p in ("aa", "bb") for i in rows for lang in ("aa", "bb")))
    return parts


def test_pool_vectors_are_assembled_by_id_from_sibling_folders(tmp_path):
    parts = make_family(tmp_path)
    ids = ["bb-d3", "aa-d0", "aa-d7"]
    corpus, queries = find_vectors(tmp_path / "pool", NAME, ids, ["aa-q1", "bb-q2"])
    np.testing.assert_array_equal(corpus, np.stack([parts["bb"][0][3], parts["aa"][0][0], parts["aa"][0][7]]))
    np.testing.assert_array_equal(queries, np.stack([parts["aa"][1][1], parts["bb"][1][2]]))
    with pytest.raises(InputError, match="1 corpus id.*first: 'cc-d0'"):
        find_vectors(tmp_path / "pool", NAME, ["aa-d0", "cc-d0"], [])


def test_multi_dataset_benchmark_tables_summary_transfer_and_resume(tmp_path, monkeypatch):
    parts = make_family(tmp_path / "data")
    out = tmp_path / "out"
    cfg = BenchmarkConfig(dataset="", embeddings_name=NAME, dims=(4, 8), seeds=(0, 1), adaptor_params=PARAMS,
                          methods=("truncate", "pca", "adaptor", "adaptor-supervised", "adaptor-from-aa",
                                   "adaptor-supervised-from-aa"),
                          method_seeds={"adaptor-supervised": [0], "adaptor-supervised-from-aa": [0]})
    folders = expand_datasets([str(tmp_path / "data" / "*")])
    assert [f.name for f in folders] == ["aa", "bb", "pool"]
    summary = run_multi_benchmark(folders, cfg, out, summary_exclude=("pool",), progress=False)
    for name in ("aa", "bb", "pool"):
        assert (out / name / "results.md").is_file() and (out / name / "ndcg_vs_dim.png").is_file()
    rows = {(r["dataset"], r["method"], r["dim"]): r["ndcg@10"] for r in summary["rows"]}
    n_seeds = {(r["dataset"], r["method"]): r["n_seeds"] for r in summary["rows"]}
    assert n_seeds[("bb", "adaptor")] == n_seeds[("bb", "adaptor-from-aa")] == 2
    assert n_seeds[("pool", "adaptor-supervised")] == n_seeds[("bb", "adaptor-supervised-from-aa")] == 1
    # On its own dataset the transferred adaptor is the in-dataset one (the same fit, reused).
    assert rows[("aa", "adaptor-from-aa", 8)] == rows[("aa", "adaptor", 8)]
    assert rows[("aa", "adaptor-supervised-from-aa", 4)] == rows[("aa", "adaptor-supervised", 4)]
    # On bb it is exactly an adaptor fitted on aa's corpus alone, applied to bb's vectors.
    corpus_b, queries_b, docs_b, qids_b = parts["bb"]
    est = MatryoshkaAdaptor(dims=(4, 8, 24), seed=0, progress=False, **PARAMS).fit(parts["aa"][0])
    test = qids_b[40:]
    lines = (tmp_path / "data" / "bb" / "qrels" / "test.tsv").read_text().splitlines()[1:]
    qrels = {ln.split("\t")[0]: {ln.split("\t")[1]: 1} for ln in lines}
    run = retrieve(est.transform(queries_b[40:], 8), est.transform(corpus_b, 8), test, docs_b)
    bb_rows = json.loads((out / "bb" / "results.json").read_text())["rows"]
    seed0 = next(r for r in bb_rows if r["method"] == "adaptor-from-aa" and r["seed"] == 0 and r["dim"] == 8)
    assert seed0["ndcg@10"] == pytest.approx(evaluate_run(qrels, run)["ndcg@10"], abs=1e-9)
    # The pool's full-dim reference is exact search over both languages' stacked vectors.
    assert ("pool", "full", 24) in rows and rows[("pool", "adaptor-from-aa", 8)] > 0
    across = {(e["method"], e["dim"]): e for e in summary["across"]}
    assert across[("pca", 4)]["n_datasets"] == 2  # the pool is left out of the mean / worst
    comp = {(c["method"], c["baseline"], c["dim"]): c for c in summary["comparisons"]}
    assert comp[("adaptor-from-aa", "pca", 8)]["n_datasets"] == 2 and comp[("adaptor-from-aa", "pca", 8)]["excluded"] == ["aa"]
    assert comp[("adaptor-supervised", "adaptor", 4)]["n_datasets"] == 3
    md = (out / "summary.md").read_text()
    assert "| adaptor-supervised-from-aa | mean |" in md and "**pool**" in md and "### bb" in md
    png = (out / "ndcg_vs_dim_by_dataset.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    # A rerun with the same configuration reads every dataset back instead of fitting again.
    import matryoshka_adaptor.eval.multi_dataset as multi

    def no_rerun(*a, **k):
        raise AssertionError("rerun")

    monkeypatch.setattr(multi, "run_benchmark", no_rerun)
    again = run_multi_benchmark(folders, cfg, out, summary_exclude=("pool",), progress=False)
    assert again["rows"] == summary["rows"]


def test_multi_dataset_bad_input_is_one_clear_error(tmp_path):
    make_family(tmp_path / "data")
    lone = tmp_path / "elsewhere" / "cc"
    rng = np.random.default_rng(1)
    v = clustered(n=20, d=24, seed=5)
    write_beir(lone, "cc", v, v[:6] + 0.01 * rng.standard_normal((6, 24)).astype(np.float32), np.arange(6), 3,
               vectors=False)
    cfg = BenchmarkConfig(dataset="", embeddings_name=NAME, dims=(4,), methods=("pca", "adaptor-from-aa"))
    aa, bb = tmp_path / "data" / "aa", tmp_path / "data" / "bb"
    with pytest.raises(InputError, match=r"no precomputed vectors named 'toy-model' for dataset .*cc"):
        run_multi_benchmark([aa, lone], cfg, tmp_path / "o")
    with pytest.raises(InputError, match="fitted on dataset 'aa', which is not among"):
        run_multi_benchmark([bb, tmp_path / "data" / "pool"], cfg, tmp_path / "o")
    with pytest.raises(InputError, match="--method-seeds names 'adaptor'"):
        run_multi_benchmark([aa, bb], BenchmarkConfig(dataset="", embeddings_name=NAME, methods=("pca",),
                                                      method_seeds={"adaptor": [0]}), tmp_path / "o")
    with pytest.raises(InputError, match="matches no folder"):
        expand_datasets([str(tmp_path / "nothing-*")])
    with pytest.raises(InputError, match="--embeddings names one folder"):
        run_multi_benchmark([aa, bb], BenchmarkConfig(dataset="", embeddings=str(aa / "embeddings" / NAME)),
                            tmp_path / "o")
    assert not (tmp_path / "o").exists()  # refused before any output


def test_cli_benchmark_over_a_shell_glob_and_its_error_line(tmp_path):
    make_family(tmp_path / "data", n_docs=60, n_train=20, n_test=20)
    runner = CliRunner()
    r = runner.invoke(app, ["benchmark", "--dataset", str(tmp_path / "data" / "aa"), str(tmp_path / "data" / "bb"),
                            "--embeddings-name", NAME, "--dims", "4,8", "--methods", "truncate,pca,adaptor-from-bb",
                            "--out", str(tmp_path / "out"), "--adaptor-params", json.dumps(PARAMS), "-q"])
    assert r.exit_code == 0, r.output
    assert "adaptor-from-bb vs pca" in r.output and (tmp_path / "out" / "summary.md").is_file()
    r = runner.invoke(app, ["benchmark", "--dataset", str(tmp_path / "data" / "aa"), str(tmp_path / "data" / "bb"),
                            "--embeddings-name", "absent-model", "--out", str(tmp_path / "o2"), "-q"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "no precomputed vectors named 'absent-model'" in r.output
    r = runner.invoke(app, ["benchmark", "--dataset", str(tmp_path / "data" / "aa"), "--embeddings-name", NAME,
                            "--summary-exclude", "pool", "--out", str(tmp_path / "o3"), "-q"])
    assert r.exit_code == 2 and "applies to a run over several datasets" in r.output
    r = runner.invoke(app, ["benchmark", "--dataset", str(tmp_path / "data" / "aa"), str(tmp_path / "data" / "bb"),
                            "--embeddings-name", NAME, "--methods", "pca,adaptor-supervised", "--labels", "5",
                            "--out", str(tmp_path / "o4"), "-q"])
    assert r.exit_code == 2 and "--labels draws a label curve on one dataset" in r.output
    assert not (tmp_path / "o4").exists()  # refused before any work
