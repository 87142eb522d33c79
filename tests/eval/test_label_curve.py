import json

import numpy as np
import pytest

from matryoshka_adaptor.errors import InputError
from matryoshka_adaptor.eval.benchmark import BenchmarkConfig, run_benchmark
from matryoshka_adaptor.eval.label_curve import label_subset, parse_label_counts
from matryoshka_adaptor.eval.report import write_report
from test_benchmark import make_toy_dataset

IDS = [f"q{i}" for i in range(40)]
QRELS = {q: {"d1": 1} for q in IDS if q not in ("q3", "q7")} | {"q7": {"d2": 0}}  # q3, q7: no positive


def test_label_subset_is_deterministic_per_seed_nested_and_labelled_only():
    a = label_subset(IDS, QRELS, 10, seed=5)
    assert a == label_subset(IDS, QRELS, 10, seed=5)
    assert a != label_subset(IDS, QRELS, 10, seed=6)
    assert len(a) == 10 and len(set(a)) == 10 and "q3" not in a and "q7" not in a
    assert a == sorted(a, key=IDS.index)  # the queries keep their order
    # nested for one seed: every smaller subset is inside every larger one
    subsets = [set(label_subset(IDS, QRELS, n, seed=5)) for n in (5, 10, 20, 38)]
    assert all(small <= big for small, big in zip(subsets, subsets[1:]))
    assert label_subset(IDS, QRELS, "all", seed=5) == [q for q in IDS if q not in ("q3", "q7")]


def test_label_subset_refuses_more_than_the_labelled_queries():
    with pytest.raises(InputError, match="more than the 38 labelled"):
        label_subset(IDS, QRELS, 39, seed=0)


@pytest.mark.parametrize("text", ["0", "-5", "ten", "25,,x", ""])
def test_parse_label_counts_refuses_bad_counts(text):
    with pytest.raises(InputError, match="--labels"):
        parse_label_counts(text)


def test_parse_label_counts_sorts_and_keeps_all_last():
    assert parse_label_counts("all, 50,25,50") == (25, 50, "all")


def test_benchmark_label_curve_rows_table_and_plot(tmp_path):
    root = make_toy_dataset(tmp_path / "toy")
    cfg = BenchmarkConfig(dataset=str(root), embeddings=str(root / "embeddings"), dims=(4, 8),
                          methods=("pca", "adaptor-queries", "adaptor-supervised"), seeds=(0, 1),
                          labels=parse_label_counts("10,all"),
                          adaptor_params={"steps": 10, "supervised_steps": 10, "eval_every": 5, "device": "cpu"})
    result = run_benchmark(cfg, progress=False)
    by = {(e["method"], e["dim"], e.get("labels")): e for e in result["summary"]}
    assert by[("adaptor-supervised", 8, 10)]["n_seeds"] == 2 and by[("adaptor-supervised", 8, 60)]["n_seeds"] == 2
    assert by[("adaptor-queries", 4, 10)]["n_seeds"] == 2 and ("pca", 8, None) in by
    assert not any(k[2] is not None for k in by if k[0] == "pca")  # PCA is fitted once, without labels
    # the seed selects the subset: the two seeds' 10-query fits differ
    rows = [r for r in result["rows"] if r["method"] == "adaptor-supervised" and r["labels"] == 10 and r["dim"] == 4]
    assert len(rows) == 2
    paths = write_report(result, tmp_path / "out")
    md = paths["labels_md"].read_text()
    assert "| 10 | adaptor-supervised |" in md and "| 60 | adaptor-queries |" in md
    assert "| 10 | supervised − max(pca, unlabelled) |" in md and "| (none) | pca |" in md
    assert paths["labels_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths["json"].read_text())["labels"] == [10, "all"]


def test_benchmark_refuses_too_many_labels_before_fitting(tmp_path):
    root = make_toy_dataset(tmp_path / "toy")
    cfg = BenchmarkConfig(dataset=str(root), embeddings=str(root / "embeddings"), dims=(8,),
                          methods=("adaptor-supervised",), labels=(61,))
    with pytest.raises(InputError, match="more than the 60 labelled"):
        run_benchmark(cfg, progress=False)
    cfg = BenchmarkConfig(dataset=str(root), embeddings=str(root / "embeddings"), dims=(8,), methods=("pca",),
                          labels=(10,))
    with pytest.raises(InputError, match="needs a method trained on queries"):
        run_benchmark(cfg, progress=False)


def test_cli_benchmark_bad_labels_is_one_line_and_exit_2(tmp_path):
    from typer.testing import CliRunner

    from matryoshka_adaptor.cli import app

    root = make_toy_dataset(tmp_path / "toy")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["benchmark", "--dataset", str(root), "--embeddings", str(root / "embeddings"),
                                      "--out", str(out), "--methods", "adaptor-supervised", "--labels", "25,zero"])
    assert result.exit_code == 2
    assert "--labels takes positive integers" in result.output
    assert not out.exists()  # refused before anything was written
