"""The adaptor as a sentence-transformers module, with the real library and the packaged MiniLM."""

import json

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")

from sentence_transformers import SentenceTransformer  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from conftest import clustered  # noqa: E402
from matryoshka_adaptor import MatryoshkaAdaptor  # noqa: E402
from matryoshka_adaptor.cli import app  # noqa: E402
from matryoshka_adaptor.errors import InputError  # noqa: E402
from matryoshka_adaptor.integrations.sentence_transformers import (  # noqa: E402
    MatryoshkaAdaptorModule,
    beir_ir_evaluator,
    export_sentence_transformer,
)
from integrations.conftest import SENTENCES  # noqa: E402

TABLE = "| method | 64 |\n| --- | --- |\n| adaptor | 0.6497 |"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, minilm_path, adaptor_384):
    out = tmp_path_factory.mktemp("export") / "minilm-adapted"
    export_sentence_transformer(adaptor_384, minilm_path, out, benchmark=TABLE)
    return out


@pytest.fixture(scope="module")
def base_vectors(minilm_path):
    return SentenceTransformer(minilm_path, device="cpu").encode(SENTENCES, convert_to_numpy=True)


def test_encode_equals_adaptor_transform_at_every_dim(exported, adaptor_384, base_vectors):
    model = SentenceTransformer(str(exported), device="cpu", trust_remote_code=True)
    assert isinstance(model[-1], MatryoshkaAdaptorModule)
    np.testing.assert_allclose(model.encode(SENTENCES), adaptor_384.transform(base_vectors), atol=1e-5)
    for dim in (16, 64):
        ours = adaptor_384.transform(base_vectors, dim=dim)
        cut = model.encode(SENTENCES, truncate_dim=dim, normalize_embeddings=True)
        np.testing.assert_allclose(cut, ours, atol=1e-5)
        # Without renormalising, sentence-transformers' cut differs by a positive factor per row only:
        raw = model.encode(SENTENCES, truncate_dim=dim)
        np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), ours, atol=1e-5)
        np.testing.assert_allclose(model.similarity(raw, raw).numpy(), ours @ ours.T, atol=1e-5)
    at_64 = SentenceTransformer(str(exported), device="cpu", trust_remote_code=True, truncate_dim=64)
    assert at_64.encode(SENTENCES).shape == (6, 64)


def test_loading_needs_the_flag_sentence_transformers_6_asks_for(exported):
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        SentenceTransformer(str(exported), device="cpu")


def test_folder_is_safetensors_json_and_push_to_hub_ready(exported):
    modules = json.loads((exported / "modules.json").read_text())
    assert modules[-1]["type"] == "matryoshka_adaptor.integrations.sentence_transformers.MatryoshkaAdaptorModule"
    sub = exported / modules[-1]["path"]
    assert sorted(p.name for p in sub.iterdir()) == ["config.json", "model.safetensors"]
    assert MatryoshkaAdaptor.load(sub).dims_ == (16, 64, 384)  # the module folder is an adaptor folder
    assert not [p for p in exported.rglob("*") if p.suffix in (".bin", ".pkl", ".pt", ".pth")]
    card = (exported / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: sentence-transformers") and "matryoshka-adaptor" in card
    assert TABLE in card and "truncate_dim=64" in card and "trust_remote_code=True" in card
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card
    assert json.loads((exported / "config_sentence_transformers.json").read_text())["similarity_fn_name"] == "cosine"


def test_sentence_transformers_save_and_load_round_trip(exported, tmp_path, base_vectors, adaptor_384):
    model = SentenceTransformer(str(exported), device="cpu", trust_remote_code=True)
    model.save(str(tmp_path / "again"))
    again = SentenceTransformer(str(tmp_path / "again"), device="cpu", trust_remote_code=True)
    np.testing.assert_allclose(again.encode(SENTENCES, truncate_dim=64, normalize_embeddings=True),
                               adaptor_384.transform(base_vectors, dim=64), atol=1e-5)
    assert TABLE in (tmp_path / "again" / "README.md").read_text()  # our model card survives a re-save
    with pytest.raises(InputError, match="safetensors only"):
        model[-1].save(str(tmp_path / "x"), safe_serialization=False)


def test_bad_exports_are_refused_before_writing(tmp_path, minilm_path, adaptor_384):
    small = MatryoshkaAdaptor(dims=(8,), steps=2, progress=False, device="cpu").fit(clustered(n=60, d=32))
    with pytest.raises(InputError, match="takes 32-dim vectors but .* gives 384-dim"):
        export_sentence_transformer(small, minilm_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not an empty folder"):
        export_sentence_transformer(adaptor_384, minilm_path, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_cli_export(tmp_path, minilm_path, adaptor_384, base_vectors):
    adaptor_384.save(tmp_path / "ad")
    (tmp_path / "results.md").write_text(TABLE + "\n")
    args = ["export", "--adaptor", tmp_path / "ad", "--base-model", minilm_path, "--out", tmp_path / "m",
            "--benchmark", tmp_path / "results.md"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    model = SentenceTransformer(str(tmp_path / "m"), device="cpu", trust_remote_code=True)
    vecs = model.encode(SENTENCES[:2], truncate_dim=16, normalize_embeddings=True)
    np.testing.assert_allclose(vecs, adaptor_384.transform(base_vectors[:2], dim=16), atol=1e-5)
    result = CliRunner().invoke(app, [str(a) for a in args])  # --out now exists
    assert result.exit_code == 2 and "not an empty folder" in result.output


@pytest.mark.slow
def test_information_retrieval_evaluator_scores_the_adapted_model_on_scifact(data_dir, tmp_path, minilm_path):
    """sentence-transformers' own evaluator, unchanged, on a slice of real SciFact; checked against this
    package's pytrec_eval nDCG@10 of the same adaptor applied to the precomputed MiniLM vectors."""
    from matryoshka_adaptor.embed.sources import load_precomputed
    from matryoshka_adaptor.eval.datasets import load_beir
    from matryoshka_adaptor.eval.metrics import evaluate_run
    from matryoshka_adaptor.eval.retrieval import retrieve

    scifact = data_dir / "scifact"
    pre = load_precomputed(scifact / "embeddings" / "all-MiniLM-L6-v2")
    adaptor = MatryoshkaAdaptor(dims=(32, 64, 384), steps=30, progress=False, device="cpu",
                                seed=0).fit(pre.corpus[:1000])
    export_sentence_transformer(adaptor, minilm_path, tmp_path / "m")
    evaluator = beir_ir_evaluator(scifact, "test", truncate_dim=64, max_queries=20, max_other_docs=40,
                                  batch_size=64)
    scores = SentenceTransformer(str(tmp_path / "m"), device="cpu", trust_remote_code=True).evaluate(evaluator)
    ndcg = scores[f"{evaluator.name}_cosine_ndcg@10"]

    qids, cids = evaluator.queries_ids, evaluator.corpus_ids
    q_row = {q: i for i, q in enumerate(pre.query_ids)}
    c_row = {c: i for i, c in enumerate(pre.corpus_ids)}
    q = adaptor.transform(pre.queries[[q_row[k] for k in qids]], dim=64)
    c = adaptor.transform(pre.corpus[[c_row[k] for k in cids]], dim=64)
    qrels = load_beir(scifact).qrels["test"]
    ours = evaluate_run({k: qrels[k] for k in qids}, retrieve(q, c, qids, cids, top_k=100))
    assert len(cids) > 40 and 0.3 < ndcg < 1.0
    assert ndcg == pytest.approx(ours["ndcg@10"], abs=1e-3)
