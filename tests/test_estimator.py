import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import clustered
from matryoshka_adaptor import MatryoshkaAdaptor, NotFittedError
from matryoshka_adaptor.neighbors import exact_topk

FAST = dict(steps=60, supervised_steps=40, eval_every=20, batch_size=64, progress=False, device="cpu")


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_init_does_no_work_and_params_round_trip():
    est = MatryoshkaAdaptor(dims=(4, 8), seed=3, steps=5)
    assert not hasattr(est, "weights_")
    assert est.get_params()["seed"] == 3
    clone = est.clone()
    assert clone == est and clone is not est
    assert clone.set_params(seed=4).seed == 4 and clone != est
    with pytest.raises(ValueError, match="unknown parameter"):
        est.set_params(bogus=1)
    with pytest.raises(NotFittedError):
        est.transform(np.ones((2, 8), np.float32))


def test_fit_returns_self_and_transform_gives_unit_vectors(corpus):
    est = MatryoshkaAdaptor(dims=(4, 8, 16), **FAST)
    assert est.fit(corpus) is est
    out = est.transform(corpus, dim=8)
    assert out.shape == (len(corpus), 8) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert est.transform(corpus).shape == corpus.shape
    assert est.dims_ == (4, 8, 16) and est.input_dim_ == 32


def test_identity_init_untrained_adaptor_is_identity(corpus):
    est = MatryoshkaAdaptor(dims=(8,), init="identity", steps=0, **{k: v for k, v in FAST.items() if k != "steps"})
    est.fit(corpus)
    np.testing.assert_allclose(est.transform(corpus), corpus, atol=1e-6)


def test_pca_init_untrained_keeps_full_dim_cosines(corpus):
    est = MatryoshkaAdaptor(dims=(8,), steps=0, **{k: v for k, v in FAST.items() if k != "steps"}).fit(corpus)
    out = est.transform(corpus)
    np.testing.assert_allclose(out @ out.T, corpus @ corpus.T, atol=1e-5)


@pytest.mark.parametrize("recipe", ["default", "paper"])
def test_training_lowers_the_loss(corpus, recipe):
    est = MatryoshkaAdaptor(dims=(4, 8, 16), recipe=recipe, **FAST).fit(corpus)
    hist = est.history_["unsupervised"]
    assert hist[-1]["loss"] < hist[0]["loss"]


def test_seed_makes_fit_repeatable(corpus):
    a = MatryoshkaAdaptor(dims=(4, 8), seed=1, **FAST).fit(corpus)
    b = MatryoshkaAdaptor(dims=(4, 8), seed=1, **FAST).fit(corpus)
    c = MatryoshkaAdaptor(dims=(4, 8), seed=2, **FAST).fit(corpus)
    assert a == b
    assert a != c


@pytest.mark.parametrize("depth, init", [(2, "pca"), (1, "pca"), (3, "pca"), (2, "identity")])
def test_numpy_path_equals_torch_path(corpus, depth, init):
    # The numpy path folds the rotation into the first layer and computes only `dim` columns.
    est = MatryoshkaAdaptor(dims=(4, 8, 16), depth=depth, init=init, **FAST).fit(corpus)
    for dim in (4, 16, 32):
        np.testing.assert_allclose(est.transform(corpus, dim), est.transform(corpus, dim, backend="torch"), atol=1e-5)


def test_save_then_load_transforms_identically(corpus, tmp_path):
    est = MatryoshkaAdaptor(dims=(4, 8), base_model="toy", **FAST).fit(corpus)
    est.save(tmp_path / "ad")
    config = json.loads((tmp_path / "ad" / "config.json").read_text())
    assert config["format_version"] == 1 and config["input_dim"] == 32 and config["base_model"] == "toy"
    assert config["dims"] == [4, 8] and "library_version" in config and config["architecture"]["rotation"]
    loaded = MatryoshkaAdaptor.load(tmp_path / "ad")
    np.testing.assert_array_equal(loaded.transform(corpus, 8), est.transform(corpus, 8))
    est.save(tmp_path / "ad")  # overwriting an existing adaptor folder works
    assert sorted(p.name for p in (tmp_path / "ad").iterdir()) == ["config.json", "model.safetensors"]


def test_transform_needs_no_torch(corpus, tmp_path):
    MatryoshkaAdaptor(dims=(4, 8), **FAST).fit(corpus).save(tmp_path / "ad")
    np.save(tmp_path / "x.npy", corpus)
    code = f"""
import sys
sys.modules['torch'] = None  # any import of torch now fails
import numpy as np
from matryoshka_adaptor import MatryoshkaAdaptor
out = MatryoshkaAdaptor.load({str(tmp_path / 'ad')!r}).transform(np.load({str(tmp_path / 'x.npy')!r}), 8)
np.save({str(tmp_path / 'y.npy')!r}, out)
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    ref = MatryoshkaAdaptor.load(tmp_path / "ad").transform(corpus, 8, backend="torch")
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), ref, atol=1e-5)


def neighbor_recall(x_small, x_full, k=10):
    truth = exact_topk(x_full, x_full, k, exclude=np.arange(len(x_full))).indices
    found = exact_topk(x_small, x_small, k, exclude=np.arange(len(x_small))).indices
    return np.mean([len(set(a) & set(b)) / k for a, b in zip(truth, found)])


def test_adapted_prefix_keeps_neighbours_much_better_than_truncation():
    x = clustered(n=600, d=64, latent=8, clusters=16, seed=1)
    est = MatryoshkaAdaptor(dims=(8, 16, 32, 64), seed=0, **{**FAST, "steps": 150}).fit(x)
    truncated = neighbor_recall(unit(x[:, :16]), x)
    adapted = neighbor_recall(est.transform(x, 16), x)
    assert adapted > truncated + 0.2, (adapted, truncated)


def test_paper_recipe_beats_truncation_on_synthetic_structure():
    x = clustered(n=600, d=64, latent=8, clusters=16, seed=1)
    est = MatryoshkaAdaptor(dims=(8, 16, 32, 64), recipe="paper", seed=0, **{**FAST, "steps": 300}).fit(x)
    assert neighbor_recall(est.transform(x, 16), x) > neighbor_recall(unit(x[:, :16]), x) + 0.05


def test_supervised_fit_runs_two_stages_and_uses_labels():
    rng = np.random.default_rng(0)
    corpus = clustered(n=300, d=32, seed=2)
    # Queries: noisy copies of documents; each is relevant to its source document.
    src = rng.choice(len(corpus), 120, replace=False)
    queries = unit(corpus[src] + 0.3 * rng.standard_normal((120, 32))).astype(np.float32)
    qrels = {f"q{i}": {f"d{s}": 1} for i, s in enumerate(src)}
    est = MatryoshkaAdaptor(dims=(4, 8, 16), **FAST).fit(
        corpus, queries, qrels, corpus_ids=[f"d{i}" for i in range(300)], query_ids=[f"q{i}" for i in range(120)])
    assert est.supervised_ and "supervised" in est.history_
    assert est.fit_summary_["supervised"]["steps_run"] > 0
    assert 0 <= est.fit_summary_["supervised"]["best_val_ndcg@10"] <= 1
    # The raised query share is for unlabeled fits only; the settings record what ran.
    assert est.settings_["query_fraction"] == 0.0 and est.settings_["dynamic_negatives"] == 16
    unlabeled = MatryoshkaAdaptor(dims=(4, 8, 16), **{**FAST, "steps": 5}).fit(corpus, queries)
    assert unlabeled.settings_["query_fraction"] == 0.25


def test_learned_rotation_stays_orthogonal_and_round_trips(corpus, tmp_path):
    est = MatryoshkaAdaptor(dims=(4, 8, 32), learn_rotation=True, **FAST).fit(corpus)
    start = MatryoshkaAdaptor(dims=(4, 8, 32), **{**FAST, "steps": 0}).fit(corpus).weights_["rotation"]
    r = est.weights_["rotation"]
    np.testing.assert_allclose(r.T @ r, np.eye(32), atol=1e-5)  # full-dim cosines unchanged by it
    assert np.abs(r - start).max() > 1e-4  # it did train
    assert not any(k.startswith("rot.") for k in est.weights_)  # saved as a plain matrix
    np.testing.assert_allclose(est.transform(corpus, 8), est.transform(corpus, 8, backend="torch"), atol=1e-5)
    est.save(tmp_path / "ad")
    np.testing.assert_array_equal(MatryoshkaAdaptor.load(tmp_path / "ad").transform(corpus, 8), est.transform(corpus, 8))


def test_every_recipe_sets_the_same_parameters_of_init():
    from matryoshka_adaptor.estimator import _RECIPE_KEYS, RECIPES

    params = set(MatryoshkaAdaptor._param_names())
    for recipe in RECIPES.values():
        assert set(recipe) == set(_RECIPE_KEYS)
        assert set(recipe) <= params


def test_large_inputs_get_gram_pca_narrow_hidden_and_a_rotation_learned_in_leading_dims():
    from matryoshka_adaptor.scaling import large_input_architecture, uncentred_pca_basis

    assert large_input_architecture(384, (16, 32, 64, 128, 256, 384)) == (384, None)  # unchanged up to 1,024
    assert large_input_architecture(3072, (16, 32, 64, 128, 256, 512, 1024, 2048, 3072)) == (768, 512)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1300, 1100)).astype(np.float32) * np.linspace(3, 0.1, 1100, dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    basis = uncentred_pca_basis(x, rng)  # Gram + eigh above 1,024 dims
    np.testing.assert_allclose(basis.T @ basis, np.eye(1100), atol=1e-4)
    _, _, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
    assert np.abs(np.sum(basis[:, :5] * vt[:5].T, axis=0)).min() > 0.99  # same leading directions (up to sign)
    est = MatryoshkaAdaptor(dims=(64, 256, 1100), steps=2, progress=False, device="cpu").fit(x)
    assert est.hidden_dim_ == 275
    r = est.weights_["rotation"]
    np.testing.assert_allclose(r.T @ r, np.eye(1100), atol=1e-4)
    np.testing.assert_allclose(est.transform(x[:50], 64), est.transform(x[:50], 64, backend="torch"), atol=1e-5)
