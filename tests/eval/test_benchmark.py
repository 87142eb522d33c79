import json

import numpy as np
import pytest

from conftest import clustered
from matryoshka_adaptor.eval.benchmark import BenchmarkConfig, run_benchmark
from matryoshka_adaptor.eval.report import write_report


def make_toy_dataset(root, n_docs=200, n_train=60, n_test=40, d=32):
    """A BEIR folder whose queries are noisy copies of their relevant document, with precomputed vectors."""
    rng = np.random.default_rng(0)
    corpus = clustered(n=n_docs, d=d, seed=3)
    n_q = n_train + n_test
    src = rng.choice(n_docs, n_q, replace=False)
    queries = corpus[src] + 0.4 * rng.standard_normal((n_q, d)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": f"doc {i}"}) + "\n"
                                               for i in range(n_docs)))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n"
                                                for i in range(n_q)))
    for split, rng_q in (("train", range(n_train)), ("test", range(n_train, n_q))):
        (root / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{src[i]}\t1\n" for i in rng_q))
    emb = root / "embeddings"
    emb.mkdir()
    np.save(emb / "corpus.npy", corpus)
    np.save(emb / "queries.npy", queries.astype(np.float32))
    (emb / "ids.json").write_text(json.dumps({"corpus_ids": [f"d{i}" for i in range(n_docs)],
                                              "query_ids": [f"q{i}" for i in range(n_q)]}))
    return root


def test_benchmark_writes_table_csv_json_and_plot(tmp_path):
    root = make_toy_dataset(tmp_path / "toy")
    cfg = BenchmarkConfig(dataset=str(root), embeddings=str(root / "embeddings"), dims=(4, 8, 16),
                          methods=("truncate", "pca", "adaptor", "adaptor-supervised"), seeds=(0, 1),
                          adaptor_params={"steps": 30, "supervised_steps": 20, "eval_every": 10, "device": "cpu"})
    result = run_benchmark(cfg, progress=False)
    assert result["n_test_queries"] == 40 and result["n_train_queries"] == 60
    by = {(e["method"], e["dim"]): e for e in result["summary"]}
    assert by[("full", 32)]["n_seeds"] == 1 and by[("truncate", 4)]["n_seeds"] == 1
    assert by[("adaptor", 8)]["n_seeds"] == 2 and "ndcg@10_std" in by[("adaptor", 8)]
    # PCA is exact at full dimension; every method matches the reference there.
    assert by[("pca", 32)]["ndcg@10"] == pytest.approx(by[("full", 32)]["ndcg@10"], abs=1e-6)
    # a supervised fit's rows say what it kept of its supervised stage (60 labels: no holdout, half way)
    shrinks = {(r["method"], r.get("supervised_shrink")) for r in result["rows"]}
    assert ("adaptor-supervised", 0.5) in shrinks and ("adaptor", None) in shrinks
    assert {r.get("supervised_gamma") for r in result["rows"] if r["method"] == "adaptor-supervised"} == {1.0}
    paths = write_report(result, tmp_path / "out")
    md = paths["md"].read_text()
    assert "| adaptor-supervised |" in md and "| full (reference) |" in md
    assert json.loads(paths["json"].read_text())["machine"]["cores"] >= 1
    assert paths["csv"].read_text().startswith("method,dim,n_seeds,ndcg@10")
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    import matplotlib.image

    img = matplotlib.image.imread(paths["png"])
    assert img.shape[0] > 300 and img.shape[1] > 500


def test_benchmark_refuses_train_test_overlap(tmp_path):
    from matryoshka_adaptor.validation import InputError

    root = make_toy_dataset(tmp_path / "toy")
    with open(root / "qrels" / "train.tsv", "a") as f:
        f.write("q70\td1\t1\n")
    cfg = BenchmarkConfig(dataset=str(root), embeddings=str(root / "embeddings"), dims=(8,),
                          methods=("adaptor-supervised",))
    with pytest.raises(InputError, match="both train and test"):
        run_benchmark(cfg, progress=False)


def test_benchmark_query_groups_reach_the_supervised_fit(tmp_path):
    from matryoshka_adaptor.validation import InputError

    root = make_toy_dataset(tmp_path / "toy")
    (tmp_path / "own.tsv").write_text("".join(f"q{i}\tg{i}\n" for i in range(60)))
    (tmp_path / "toy.tsv").write_text("".join(f"q{i}\ttopic{i // 10}\n" for i in range(60)))
    params = {"steps": 10, "supervised_steps": 20, "eval_every": 10, "device": "cpu", "min_validation_queries": 5}

    def rows(groups):
        cfg = BenchmarkConfig(dataset=str(root), embeddings=str(root / "embeddings"), dims=(4, 8),
                              methods=("adaptor-supervised",), adaptor_params=params, query_groups=groups)
        return [r for r in run_benchmark(cfg, progress=False)["rows"] if r["method"] == "adaptor-supervised"]

    plain = rows(None)
    own = rows(str(tmp_path / "own.tsv"))  # one query per group: the random holdout, the same fit
    assert [r["ndcg@10"] for r in own] == [r["ndcg@10"] for r in plain]
    topics = rows(str(tmp_path / "{dataset}.tsv"))  # {dataset}: the folder's name, toy
    assert {r["supervised_held_out_groups"] for r in topics} == {1} and "supervised_held_out_groups" not in plain[0]
    assert all(isinstance(r["supervised_best_step"], int) for r in topics) and "stage1_kept" not in topics[0]
    params["use_queries"] = "validated"
    assert {r["stage1_kept"] for r in rows(str(tmp_path / "{dataset}.tsv"))} <= {"with queries", "corpus only"}
    assert "supervised_fallback_kept" not in topics[0]
    params.update(use_queries=True, supervised_fallback="corpus-only")
    assert {r["supervised_fallback_kept"] for r in rows(None)} <= {"supervised", "corpus-only"}
    # the command line: one held-out group is no evidence, said in one line for each seed's fit
    from typer.testing import CliRunner

    from matryoshka_adaptor.cli import app

    r = CliRunner().invoke(app, ["benchmark", "--dataset", str(root), "--embeddings", str(root / "embeddings"),
                                 "--dims", "4,8", "--methods", "adaptor-supervised", "--seeds", "0,1", "-q",
                                 "--adaptor-params", json.dumps(params), "--query-groups",
                                 str(tmp_path / "{dataset}.tsv"), "--out", str(tmp_path / "cli")])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("warning: only 1 query group held out")]
    assert len(lines) == 2 and "supervised_fallback='corpus-only' will keep the corpus-only adaptor" in lines[0]
    assert "HeldOutEvidenceWarning" not in r.output  # not Python's two-line format
    del params["use_queries"]
    (tmp_path / "toy.tsv").write_text("q0\tg\n")
    with pytest.raises(InputError, match="has no group for 59 of the 60 train queries"):
        rows(str(tmp_path / "{dataset}.tsv"))
    unsupervised = BenchmarkConfig(dataset=str(root), embeddings=str(root / "embeddings"), dims=(4,),
                                   methods=("pca",), query_groups=str(tmp_path / "own.tsv"))
    with pytest.raises(InputError, match="add adaptor-supervised to --methods"):
        run_benchmark(unsupervised, progress=False)


def test_scifact_full_dim_reference_is_0_6451(data_dir):
    """all-MiniLM-L6-v2 on SciFact test: nDCG@10 = 0.6451 (MTEB publishes 64.51)."""
    cfg = BenchmarkConfig(dataset=str(data_dir / "scifact"),
                          embeddings=str(data_dir / "scifact" / "embeddings" / "all-MiniLM-L6-v2"),
                          dims=(384,), methods=("truncate",))
    result = run_benchmark(cfg, progress=False)
    full = next(e for e in result["summary"] if e["method"] == "full")
    assert full["ndcg@10"] == pytest.approx(0.6451, abs=5e-5)


def test_equal_bytes_benchmark_rows_table_and_pareto_plot(tmp_path):
    from matryoshka_adaptor.eval.report import equal_bytes_tables, pareto_front

    root = make_toy_dataset(tmp_path / "toy")
    cfg = BenchmarkConfig(dataset=str(root), embeddings=str(root / "embeddings"), dims=(8, 16),
                          methods=("truncate", "pca", "adaptor-supervised"), seeds=(0,),
                          adaptor_params={"steps": 20, "supervised_steps": 10, "eval_every": 10, "device": "cpu"},
                          quantize=("float32", "int8", "binary"), rescore=(0, 20), quantize_dims=(8, 16))
    result = run_benchmark(cfg, progress=False)
    rows = result["equal_bytes_summary"]
    by = {(e["method"], e["dim"], e["precision"], e["shortlist"], e["rescore_with"]): e for e in rows}
    assert by[("full", 32, "float32", 0, "none")]["bytes"] == 128
    assert by[("pca", 16, "binary", 0, "none")]["bytes"] == 2 and by[("truncate", 8, "int8", 0, "none")]["bytes"] == 8
    # float32 without rescoring is the plain benchmark's number; the supervised adaptor is also rescored
    # with its own adapted vectors
    plain = {(e["method"], e["dim"]): e["ndcg@10"] for e in result["summary"]}
    assert by[("pca", 16, "float32", 0, "none")]["ndcg@10"] == pytest.approx(plain[("pca", 16)], abs=1e-9)
    assert ("adaptor-supervised", 8, "binary", 20, "adapted") in by
    assert ("truncate", 8, "binary", 20, "adapted") not in by
    # rescoring the full-dim binary shortlist with float32 moves toward the float32 result
    full = by[("full", 32, "float32", 0, "none")]["ndcg@10"]
    assert abs(by[("full", 32, "binary", 20, "original")]["ndcg@10"] - full) <= \
        abs(by[("full", 32, "binary", 0, "none")]["ndcg@10"] - full) + 1e-9
    front = pareto_front([e for e in rows if e["shortlist"] == 0])
    assert [e["bytes"] for e in front] == sorted(e["bytes"] for e in front)
    assert all(b["ndcg@10"] > a["ndcg@10"] for a, b in zip(front, front[1:]))
    md = equal_bytes_tables(result)
    assert "| 8 |" in md and "best adaptor-supervised" in md
    paths = write_report(result, tmp_path / "out")
    assert paths["equal_bytes_png"].read_bytes()[:4] == b"\x89PNG"
    assert "| method | dim | precision | bytes/vector |" in paths["equal_bytes_md"].read_text()


def test_equal_bytes_lancedb_store_matches_numpy(tmp_path):
    pytest.importorskip("lancedb")
    root = make_toy_dataset(tmp_path / "toy")
    common = dict(dataset=str(root), embeddings=str(root / "embeddings"), dims=(8,), methods=("pca",), seeds=(0,),
                  quantize=("int8", "binary", "binary-centered", "binary-itq"), rescore=(0, 20), quantize_dims=(8, 16))
    a = run_benchmark(BenchmarkConfig(**common), progress=False)["equal_bytes_rows"]
    b = run_benchmark(BenchmarkConfig(**common, store="lancedb"), progress=False)["equal_bytes_rows"]
    assert len(a) == len(b) == 3 * 4 * 2 + 4 * 2  # pca: dims 8, 16, 32 x 4 precisions x 2 shortlists; full: 4 x 2
    for ra, rb in zip(a, b):
        assert ra["ndcg@10"] == pytest.approx(rb["ndcg@10"], abs=1e-12), (ra, rb)
