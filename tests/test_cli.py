import json

import numpy as np
import pyarrow.parquet as pq
from typer.testing import CliRunner

from matryoshka_adaptor.cli import _fallback_line, app
from matryoshka_adaptor.formats import write_embeddings

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_fit_transform_info_round_trip(tmp_path, corpus):
    np.save(tmp_path / "corpus.npy", corpus)
    r = invoke("fit", tmp_path / "corpus.npy", "--out", tmp_path / "ad", "--dims", "4,8,16", "--steps", "20", "-q",
               "--device", "cpu", "--params", '{"learn_rotation": false}')
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
    assert invoke("fit", tmp_path / "c.parquet", "-o", tmp_path / "ad", "--dims", "8", "--steps", "5", "-q",
                  "--params", '{"learn_rotation": false}').exit_code == 0
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


def test_embed_over_http_writes_vectors_and_ids_and_resumes_from_the_cache(tmp_path, monkeypatch):
    from fakes import FakeModel
    from matryoshka_adaptor.serve.app import create_app
    from matryoshka_adaptor.serve.server import BackgroundServer

    rows = [{"_id": f"d{i}", "title": f"Title {i}", "text": f"body of document {i}"} for i in range(7)]
    (tmp_path / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    monkeypatch.setenv("MY_KEY", "sk-cli-secret")
    model = FakeModel(8)
    with BackgroundServer(create_app(model, model_name="fake", api_key="sk-cli-secret", inject_failures=[503])) as url:
        args = ["embed", "--provider", "openai", "--model", "fake", "--base-url", url, "--api-key-env", "MY_KEY",
                "--input", tmp_path / "corpus.jsonl", "--cache", tmp_path / "c.sqlite", "--batch-size", "3", "-q"]
        r = invoke(*args, "--out", tmp_path / "v.npy")
        assert r.exit_code == 0, r.output
        assert "0 from cache, 7 embedded in 4 API calls, 1 retries" in r.output
        r = invoke(*args, "--out", tmp_path / "v.parquet")
        assert r.exit_code == 0 and "7 from cache" in r.output and "0 API calls" in r.output
    vectors = np.load(tmp_path / "v.npy")
    np.testing.assert_allclose(vectors[2], model.vector("Title 2 body of document 2"), atol=1e-6)
    assert json.loads((tmp_path / "v.npy.ids.json").read_text())["ids"][:2] == ["d0", "d1"]
    assert pq.read_table(tmp_path / "v.parquet").column("id").to_pylist()[-1] == "d6"
    assert len(model.seen) == 7 and "sk-cli-secret" not in r.output


def test_embed_reports_a_client_error_clearly(tmp_path):
    from fakes import FakeModel
    from matryoshka_adaptor.serve.app import create_app
    from matryoshka_adaptor.serve.server import BackgroundServer

    (tmp_path / "t.txt").write_text("one\ntwo\n")
    with BackgroundServer(create_app(FakeModel(8), model_name="fake")) as url:
        r = invoke("embed", "--model", "nope", "--base-url", url, "--input", tmp_path / "t.txt",
                   "--out", tmp_path / "v.npy", "--cache", tmp_path / "c.sqlite", "-q")
    assert r.exit_code == 2 and "HTTP 404" in r.output and "--model" in r.output
    assert not (tmp_path / "v.npy").exists()


def test_serve_refuses_a_bad_configuration(tmp_path):
    r = invoke("serve", "--upstream", "http://127.0.0.1:9/v1")
    assert r.exit_code == 2 and "--upstream-model" in r.output
    r = invoke("serve", "--local-model", "x", "--api-key-env", "MA_SURELY_UNSET_VAR")
    assert r.exit_code == 2 and "MA_SURELY_UNSET_VAR" in r.output


def test_fit_params_json_and_file_reach_every_setting_and_options_win(tmp_path, corpus):
    np.save(tmp_path / "c.npy", corpus)
    (tmp_path / "p.json").write_text(json.dumps({"temperature": 0.1, "steps": 3, "k": 4, "learn_rotation": False}))
    r = invoke("fit", tmp_path / "c.npy", "-o", tmp_path / "ad", "--dims", "8", "-q", "--params-file", tmp_path / "p.json",
               "--params", '{"steps": 4, "max_positives": 3}', "--k", "5")
    assert r.exit_code == 0, r.output
    settings = json.loads((tmp_path / "ad" / "config.json").read_text())["training"]["settings"]
    assert settings["temperature"] == 0.1 and settings["steps"] == 4 and settings["k"] == 5
    assert settings["max_positives"] == 3 and settings["batch_size"] == 128 and settings["dims"] == [8]


def test_fit_refuses_bad_parameters_in_one_line_before_reading_data(tmp_path):
    missing = tmp_path / "never-read.npy"
    for args, message in [(("--lr", "nan"), "lr=nan is not valid: lr must be a finite number in (0, 1000000]"),
                          (("--steps", "-5"), "steps=-5 is not valid: steps must be an integer >= 0"),
                          (("--k", "0"), "k=0 is not valid: k must be an integer >= 1"),
                          (("--params", '{"temperature": 0}'), "temperature=0 is not valid"),
                          (("--params", '{"bogus": 1}'), "unknown parameter 'bogus'"),
                          (("--params", "[1]"), "--params must be a JSON object"),
                          (("--params", "{steps: 1}"), "--params is not valid JSON")]:
        r = invoke("fit", missing, "-o", tmp_path / "ad", *args)
        assert r.exit_code == 2 and message in r.output, (args, r.output)
        assert r.output.count("\n") == 1 and "Traceback" not in r.output
    assert not (tmp_path / "ad").exists()


def test_fit_with_a_diverging_learning_rate_warns_and_saves_the_best_weights(tmp_path, corpus):
    np.save(tmp_path / "c.npy", corpus)
    r = invoke("fit", tmp_path / "c.npy", "-o", tmp_path / "ad", "--dims", "4,8", "--lr", "1e6", "--steps", "40", "-q",
               "--params", '{"learn_rotation": false, "eval_every": 20}')
    assert r.exit_code == 0, r.output
    assert "warning: fit (unsupervised): training diverged (the validation score fell" in r.output
    info = json.loads(invoke("info", tmp_path / "ad").output)
    assert "diverged" in info["fit_summary"]["unsupervised"]
    from matryoshka_adaptor import MatryoshkaAdaptor

    out = MatryoshkaAdaptor.load(tmp_path / "ad").transform(corpus, 8)
    assert np.isfinite(out).all()


def test_fit_query_groups_hold_out_whole_groups_and_bad_files_fail_before_training(tmp_path, corpus):
    np.save(tmp_path / "corpus.npy", corpus)
    np.save(tmp_path / "queries.npy", corpus[:40] + 0.01)
    (tmp_path / "qrels.tsv").write_text("".join(f"{i}\t{i}\t1\n" for i in range(40)))
    (tmp_path / "groups.tsv").write_text("query-id\tgroup\n" + "".join(f"{i}\ttopic-{i // 5}\n" for i in range(40)))
    common = ("--queries", tmp_path / "queries.npy", "--qrels", tmp_path / "qrels.tsv", "--dims", "4,8", "--steps",
              "5", "--supervised-steps", "5", "-q", "--device", "cpu", "--params",
              '{"min_validation_queries": 3, "use_queries": "validated"}')
    r = invoke("fit", tmp_path / "corpus.npy", "--out", tmp_path / "a", *common, "--query-groups", tmp_path / "groups.tsv")
    assert r.exit_code == 0, r.output
    assert "held-out labelled queries: 5 in 1 whole group of --query-groups." in r.output  # 10 % of 40 is 4
    assert ("warning: only 1 query group held out (5 labelled queries); a test over fewer than 5 groups cannot show "
            "a gain beyond noise, so use_queries='validated' will drop the query anchors, and "
            "supervised_shrink='auto' will keep stage 2 half way. Raise validation_fraction (now 0.1)") in r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("stage 1 kept the "))
    assert "over the corpus-only start on 5 held-out labelled queries" in line
    assert "(one query group held out: nothing to test by, so no evidence beyond noise)" in line
    r = invoke("fit", tmp_path / "corpus.npy", "--out", tmp_path / "f", *common[:-1],
               '{"min_validation_queries": 3, "supervised_fallback": "corpus-only"}')
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("saved the "))
    assert "over the corpus-only adaptor on 4 held-out labelled queries" in line and "standard error" in line
    stage = next(ln for ln in r.output.splitlines() if ln.startswith("supervised stage kept at shrink "))
    assert ", the best on 4 held-out labelled queries (nDCG@10 by shrink toward the unsupervised start 0: " in stage
    kept = json.loads(invoke("info", tmp_path / "f").output)["fit_summary"]["supervised"]["fallback"]["kept"]
    assert line.startswith("saved the corpus-only adaptor instead" if kept == "corpus-only" else "saved the supervised")
    # with the groups, one held-out group is no evidence: said before training, and in the fallback line
    r = invoke("fit", tmp_path / "corpus.npy", "--out", tmp_path / "g", *common[:-1],
               '{"min_validation_queries": 3, "supervised_fallback": "corpus-only"}', "--query-groups",
               tmp_path / "groups.tsv")
    assert r.exit_code == 0, r.output
    assert "so supervised_fallback='corpus-only' will keep the corpus-only adaptor. Raise" in r.output
    assert r.output.index("warning: only 1 query group held out") < r.output.index("saved adaptor to")
    assert ("saved the corpus-only adaptor instead of the supervised one: gain over the corpus-only adaptor on 5 "
            "held-out labelled queries") in r.output
    assert "(one query group held out: nothing to test by, so no evidence beyond noise), not beyond noise." in r.output
    # a fallback for one prefix that loses beyond noise, read back from a saved fit (dim keys as strings)
    vetoed = {"held_out_queries": 40, "gain": 0.03, "standard_error": 0.01, "mean_gain_beyond_noise": True,
              "kept": "corpus-only", "gain_by_dim": {"16": -0.02, "64": 0.08}, "standard_error_by_dim":
              {"16": 0.005, "64": 0.01}, "losing_dims": [16]}
    assert _fallback_line(vetoed) == (
        "saved the corpus-only adaptor instead of the supervised one: gain over the corpus-only adaptor on 40 "
        "held-out labelled queries +0.0300 nDCG@10 (standard error 0.0100), but at 16 dims -0.0200 (standard "
        "error 0.0050) it loses beyond noise.")
    grouped = {**vetoed, "held_out_groups": 3, "p_value_gain": 0.125, "level": 0.04998, "mean_gain_beyond_noise": False,
               "losing_dims": []}
    assert "+0.0300 nDCG@10 (sign-flip test over 3 query groups: p = 0.125, beyond noise at p <= 0.05), not beyond " \
           "noise." in _fallback_line(grouped)
    (tmp_path / "short.tsv").write_text("".join(f"{i}\tt\n" for i in range(39)))
    (tmp_path / "three.tsv").write_text("0\ta\tb\n")
    for bad, message in (("short.tsv", "has no group for 1 of the 40 queries (first: '39')"),
                         ("three.tsv", "line 1: expected query-id, group")):
        r = invoke("fit", tmp_path / "corpus.npy", "--out", tmp_path / "b", *common, "--query-groups", tmp_path / bad)
        assert r.exit_code != 0 and message in r.output and not (tmp_path / "b").exists()
    r = invoke("fit", tmp_path / "corpus.npy", "--out", tmp_path / "b", "--query-groups", tmp_path / "groups.tsv")
    assert r.exit_code != 0 and "--query-groups needs --qrels" in r.output


def test_a_supervised_fit_says_what_it_kept_of_its_supervised_stage(tmp_path, corpus):
    np.save(tmp_path / "corpus.npy", corpus)
    np.save(tmp_path / "queries.npy", corpus[:30] + 0.01)
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{i}\t{i}\t1\n" for i in range(30)))
    common = ("--queries", tmp_path / "queries.npy", "--qrels", tmp_path / "qrels.tsv", "--dims", "4,8", "--steps",
              "5", "--supervised-steps", "5", "-q", "--device", "cpu")
    # 30 labels: 3 would be held out, below min_validation_queries=20, so nothing checks stage 2
    r = invoke("fit", tmp_path / "corpus.npy", "--out", tmp_path / "a", *common)
    assert r.exit_code == 0, r.output
    assert "kept half way back to the unsupervised start: fewer than 20 labelled queries" in r.output
    # a holdout of 3: the line reports the held-out evidence and the choice it made
    r = invoke("fit", tmp_path / "corpus.npy", "--out", tmp_path / "b", *common,
               "--params", '{"min_validation_queries": 3}')
    assert r.exit_code == 0, r.output
    assert "on 3 held-out labelled queries the trained weights beat the half-way ones by" in r.output
    assert "ranking weight gamma" not in r.output  # only gamma="validated" chooses one
    r = invoke("fit", tmp_path / "corpus.npy", "--out", tmp_path / "g", *common,
               "--params", '{"min_validation_queries": 3, "gamma": "validated"}')
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("ranking weight gamma="))
    assert "kept: nDCG@10 on 3 held-out labelled queries gamma=1: " in line and ", gamma=2: " in line
    # the saved settings record the weight kept, not "validated"
    settings = json.loads((tmp_path / "g" / "config.json").read_text())["training"]["settings"]
    assert settings["gamma"] in (1.0, 2.0) and f"gamma={settings['gamma']:g} kept" in line
    r = invoke("fit", tmp_path / "corpus.npy", "--out", tmp_path / "c", *common, "--params", '{"supervised_shrink": 1}')
    assert r.exit_code == 0, r.output
    assert "supervised stage kept at shrink 1 (supervised_shrink=1.0)" in r.output
    r = invoke("fit", tmp_path / "corpus.npy", "--out", tmp_path / "d", "--dims", "4,8", "--steps", "5", "-q")
    assert r.exit_code == 0 and "supervised stage" not in r.output  # no labels, no such line
