import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import clustered
from matryoshka_adaptor import MatryoshkaAdaptor, NotFittedError
from matryoshka_adaptor.errors import HeldOutEvidenceWarning, InputError
from matryoshka_adaptor.fitting import fallback_choice
from matryoshka_adaptor.neighbors import exact_topk
from matryoshka_adaptor.nn.training import Trainer, min_groups_for_evidence, paired_evidence

# Fast fits skip the learned rotation unless a test is about it (it is the slow part of a step).
FAST = dict(steps=60, supervised_steps=40, eval_every=20, batch_size=64, progress=False, device="cpu",
            learn_rotation=False)


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


def topic_task(seed=0):
    """Relevance set by a low-variance "topic" subspace; four high-variance "style" directions
    dominate the full-dim cosine (and the PCA start), so only labels reveal what matters."""
    rng = np.random.default_rng(seed)
    d, n_topics = 32, 10
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    centres = rng.standard_normal((n_topics, 4))

    def make(n):
        t = rng.integers(0, n_topics, n)
        x = ((centres[t] + 0.2 * rng.standard_normal((n, 4))) @ basis[:, :4].T
             + 1.5 * rng.standard_normal((n, 4)) @ basis[:, 4:8].T
             + 0.1 * rng.standard_normal((n, d - 8)) @ basis[:, 8:].T)
        return unit(x).astype(np.float32), t

    corpus, doc_topic = make(300)
    queries, query_topic = make(240)
    return corpus, doc_topic, queries, query_topic


def test_supervised_fit_runs_two_stages_and_labels_help():
    corpus, doc_topic, queries, query_topic = topic_task()
    train, test = slice(0, 160), slice(160, 240)
    qrels = {f"q{i}": {f"d{j}": 1 for j in np.flatnonzero(doc_topic == query_topic[i])} for i in range(160)}
    ids = dict(corpus_ids=[f"d{i}" for i in range(300)], query_ids=[f"q{i}" for i in range(160)])
    params = dict(dims=(4, 8, 32), **{**FAST, "steps": 20, "supervised_steps": 100})
    # 16 of the 160 are held out, so stage 2 early-stops, and is kept whole when those queries show it
    # beyond noise (the default holds out only from 20 on, and keeps half of an unchecked stage 2).
    supervised = MatryoshkaAdaptor(**params, min_validation_queries=10).fit(corpus, queries[train], qrels, **ids)
    unlabeled = MatryoshkaAdaptor(**params).fit(corpus, queries[train])  # the same queries, no labels

    def precision_at_10(est, dim):
        c, q = est.transform(corpus, dim), est.transform(queries[test], dim)
        top = np.argsort(-(q @ c.T), axis=1)[:, :10]
        return float(np.mean(doc_topic[top] == query_topic[test][:, None]))

    assert supervised.supervised_ and "supervised" in supervised.history_
    summary = supervised.fit_summary_["supervised"]
    assert summary["best_step"] > 0  # stage 2 improved on stage 1
    evidence = summary["shrink_evidence"]  # here by ~5 standard errors over the half-way weights
    assert evidence["held_out_queries"] == 16 and summary["shrink"] == 1.0
    assert evidence["gain"] > Trainer.EVIDENCE_Z * evidence["standard_error"]
    assert summary["listwise_target"] == "adapted"  # "auto" with held-out queries
    # Held-out queries: labels lift precision@10 at 8 dims from ~0.55 to ~0.75 (seed 0).
    assert precision_at_10(supervised, 8) > precision_at_10(unlabeled, 8) + 0.1
    assert precision_at_10(supervised, 4) > precision_at_10(unlabeled, 4) + 0.05
    # The raised query share is for unlabeled fits only; the settings record what ran.
    assert supervised.settings_.query_fraction == 0.0 and supervised.settings_.dynamic_negatives == 16
    assert unlabeled.settings_.query_fraction == 0.25 and not unlabeled.supervised_
    # "auto" query candidates: kept in the supervised fit, masked in the unlabelled one
    assert supervised.settings_.queries_as_candidates is True
    assert unlabeled.settings_.queries_as_candidates is False


def test_supervised_fallback_keeps_the_supervised_fit_only_on_evidence_else_the_corpus_only_fit_exactly(tmp_path):
    corpus, doc_topic, queries, query_topic = topic_task()
    qrels = {f"q{i}": {f"d{j}": 1 for j in np.flatnonzero(doc_topic == query_topic[i])} for i in range(160)}
    ids = dict(corpus_ids=[f"d{i}" for i in range(300)], query_ids=[f"q{i}" for i in range(160)])
    params = dict(dims=(4, 8, 32), **{**FAST, "steps": 20, "supervised_steps": 100}, min_validation_queries=10)
    # Labels that teach the topics: the supervised fit is kept (all coordinates, hidden width d).
    kept = MatryoshkaAdaptor(**params, supervised_fallback="corpus-only").fit(corpus, queries[:160], qrels, **ids)
    choice = kept.fit_summary_["supervised"]["fallback"]
    assert choice["kept"] == "supervised" and choice["held_out_queries"] == 16
    assert choice["gain"] > Trainer.EVIDENCE_Z * choice["standard_error"] > 0
    assert choice["gain"] == pytest.approx(choice["val_ndcg@10_supervised"] - choice["val_ndcg@10_corpus_only"])
    assert list(choice["gain_by_dim"]) == [4, 8, 32] == list(choice["standard_error_by_dim"])
    assert np.mean(list(choice["gain_by_dim"].values())) == pytest.approx(choice["gain"])
    assert kept.hidden_dim_ == 32 and kept.fit_summary_["supervised"]["best_step"] > 0
    assert choice["mean_gain_beyond_noise"] and choice["losing_dims"] == []
    # With the fallback as the guard, the "auto" shrink keeps the best grid value on the held-out queries.
    stage2 = kept.fit_summary_["supervised"]
    scores = stage2["shrink_scores"]["val_ndcg@10_by_shrink"]
    assert list(scores) == ["0.0", "0.25", "0.5", "0.75", "1.0"] and "shrink_evidence" not in stage2
    assert scores[str(stage2["shrink"])] == max(scores.values())
    # Labels that name each query's own noisy copy, which the full-dim vectors already find: no gain
    # beyond noise, so the fit returns what a fit of the corpus alone makes, bit for bit.
    rng = np.random.default_rng(0)
    docs = unit(rng.standard_normal((300, 32))).astype(np.float32)
    near = unit(docs[:200] + 0.05 * rng.standard_normal((200, 32))).astype(np.float32)
    copies = {str(i): {str(i): 1} for i in range(200)}
    fallback = MatryoshkaAdaptor(**params, supervised_fallback="corpus-only").fit(docs, near, copies)
    corpus_only = MatryoshkaAdaptor(**params).fit(docs)
    choice = fallback.fit_summary_["supervised"]["fallback"]
    assert choice["kept"] == "corpus-only" and choice["held_out_queries"] == 20
    assert not choice["gain"] > Trainer.EVIDENCE_Z * choice["standard_error"]
    assert fallback.weights_.keys() == corpus_only.weights_.keys()
    assert all(np.array_equal(fallback.weights_[k], corpus_only.weights_[k]) for k in corpus_only.weights_)
    assert fallback.hidden_dim_ == corpus_only.hidden_dim_ == 16  # the corpus-only architecture (half block)
    assert fallback.supervised_ and fallback.settings_.supervised_fallback == "corpus-only"
    assert fallback.fit_summary_["supervised"]["steps_run"] > 0  # the record of the fit it replaced
    loaded = MatryoshkaAdaptor.load(fallback.save(tmp_path / "a"))
    np.testing.assert_array_equal(loaded.transform(docs, 8), corpus_only.transform(docs, 8))
    # Too few labels to hold any out: nothing to compare by, so the supervised fit stays.
    few = {k: copies[k] for k in list(copies)[:15]}
    small = MatryoshkaAdaptor(**params, supervised_fallback="corpus-only").fit(docs, near[:15], few)
    assert small.fit_summary_["supervised"]["fallback"] == {"kept": "supervised", "held_out_queries": 0}
    assert small.hidden_dim_ == 32


def test_the_fallback_rule_wants_a_mean_gain_beyond_noise_and_no_dim_losing_beyond_noise():
    rng = np.random.default_rng(0)
    noise = 0.01 * rng.standard_normal((3, 100))
    clear_gain = np.array([[0.05], [0.05], [0.05]]) + noise
    assert fallback_choice(clear_gain, (16, 64, 256), 1.645)["kept"] == "supervised"
    # the same mean over the dims, but the 16-dim prefix clearly worse: the corpus-only adaptor
    one_dim_lost = np.array([[-0.03], [0.09], [0.09]]) + noise
    choice = fallback_choice(one_dim_lost, (16, 64, 256), 1.645)
    assert choice["mean_gain_beyond_noise"] and choice["losing_dims"] == [16] and choice["kept"] == "corpus-only"
    assert choice["gain_by_dim"][16] == pytest.approx(-0.03, abs=0.005)
    assert fallback_choice(0.01 * rng.standard_normal((3, 100)), (16, 64, 256), 1.645)["kept"] == "corpus-only"


def test_held_out_evidence_counts_query_groups_not_queries():
    rng = np.random.default_rng(0)
    gain = 0.03 + 0.01 * rng.standard_normal(60)
    plain = paired_evidence(gain, 1.645)
    assert plain["beyond_noise"]
    assert paired_evidence(gain, 1.645, np.arange(60)) == plain  # one query per group: the plain rule
    # gains that come as three topics, each moving all its queries together: beyond noise counted by
    # query, but three topics are no evidence (the sign-flip test's smallest p-value is 1/8)
    three = np.repeat(["a", "b", "c"], 20)
    topics = np.repeat([0.08, 0.02, 0.01], 20) + 0.002 * rng.standard_normal(60)
    assert paired_evidence(topics, 1.645)["beyond_noise"]
    grouped = paired_evidence(topics, 1.645, three)
    assert grouped["held_out_groups"] == 3 and grouped["p_value_gain"] == 0.125 and not grouped["beyond_noise"]
    assert grouped["level"] == pytest.approx(0.05, abs=1e-4) and grouped["gain"] == pytest.approx(topics.mean())
    # two groups with nearly equal means: a cluster-robust standard error comes out near zero, the test does not
    near = np.repeat([0.03, 0.0301], 30)
    assert not paired_evidence(near, 1.645, np.repeat([0, 1], 30))["beyond_noise"]
    assert paired_evidence(np.full(5, 0.01), 1.645, np.zeros(5))["p_value_gain"] == 1.0  # one group: nothing to test
    assert min_groups_for_evidence(1.645) == 5  # 2^-4 > 0.05 >= 2^-5
    # six topics that all gain: p = 1/64, beyond noise; six that all lose: a loss beyond noise
    six = np.repeat(np.arange(6), 10)
    assert paired_evidence(np.repeat(np.linspace(0.01, 0.06, 6), 10), 1.645, six)["beyond_noise"]
    lost = paired_evidence(-np.repeat(np.linspace(0.01, 0.06, 6), 10), 1.645, six)
    assert lost["loss_beyond_noise"] and lost["p_value_loss"] == pytest.approx(1 / 64)
    # the fallback rule on such gains: the corpus-only adaptor for three topics, the record says why
    choice = fallback_choice(np.stack([topics] * 3), (16, 64, 256), 1.645, three)
    assert choice["kept"] == "corpus-only" and choice["held_out_groups"] == 3 and not choice["losing_dims"]
    assert fallback_choice(np.stack([topics] * 3), (16, 64, 256), 1.645)["kept"] == "supervised"
    # six topics that gain on the mean and all lose at 16 dims: that dim vetoes
    sixes = np.stack([-np.repeat(np.linspace(0.01, 0.06, 6), 10)] + [np.repeat(np.linspace(0.05, 0.1, 6), 10)] * 2)
    choice = fallback_choice(sixes, (16, 64, 256), 1.645, six)
    assert choice["mean_gain_beyond_noise"] and choice["losing_dims"] == [16] and choice["kept"] == "corpus-only"


def test_query_groups_make_the_held_out_queries_whole_topics():
    corpus, doc_topic, queries, query_topic = topic_task()
    qrels = {f"q{i}": {f"d{j}": 1 for j in np.flatnonzero(doc_topic == query_topic[i])} for i in range(160)}
    ids = dict(corpus_ids=[f"d{i}" for i in range(300)], query_ids=[f"q{i}" for i in range(160)])
    params = dict(dims=(4, 8, 32), **{**FAST, "steps": 10, "supervised_steps": 20}, min_validation_queries=10)

    def fit(groups):
        return MatryoshkaAdaptor(**params).fit(corpus, queries[:160], qrels, **ids, query_groups=groups)

    plain = fit(None)
    with pytest.warns(HeldOutEvidenceWarning, match=r"query groups? held out \(\d+ labelled queries\); a test over "
                      r"fewer than 5 groups .* supervised_shrink='auto' will keep stage 2 half way"):
        topics = fit([f"topic-{t}" for t in query_topic[:160]])
    summary = topics.fit_summary_["supervised"]
    held_topics = summary["held_out_groups"]
    sizes = np.bincount(query_topic[:160])
    assert held_topics >= 1 and summary["held_out_queries"] >= 16  # whole topics, at least the usual 10 %
    assert summary["held_out_queries"] in {int(sizes[list(c)].sum()) for c in
                                           __import__("itertools").combinations(np.flatnonzero(sizes), held_topics)}
    assert "held_out_groups" not in plain.fit_summary_["supervised"]
    # one query per group is the random holdout: the same fit, bit for bit
    np.testing.assert_array_equal(fit(list(range(160))).transform(corpus, 8), plain.transform(corpus, 8))


@pytest.mark.parametrize("groups, qrels, message", [
    ([0] * 5, True, "query_groups has 5 labels but there are 20 queries"),
    ([None] * 20, True, "labels must be str or int, got None for query row 0"),
    ("topic", True, "must be a sequence"),
    ([0] * 20, False, "query_groups were given without qrels"),
])
def test_bad_query_groups_fail_with_one_line(groups, qrels, message):
    rng = np.random.default_rng(0)
    corpus, queries = rng.standard_normal((50, 8)), rng.standard_normal((20, 8))
    labels = {str(i): {str(i): 1} for i in range(20)} if qrels else None
    with pytest.raises(InputError, match=message):
        MatryoshkaAdaptor(dims=(4, 8)).fit(corpus, queries, labels, query_groups=groups)


@pytest.mark.parametrize("params, reason", [(dict(lr=1e6), "the validation score fell"),
                                            (dict(temperature=1e-40), "the loss became nan")])
def test_divergence_guard_restores_the_best_weights_and_warns(corpus, params, reason):
    from matryoshka_adaptor.errors import TrainingDivergedWarning

    with pytest.warns(TrainingDivergedWarning, match=reason):
        est = MatryoshkaAdaptor(dims=(4, 8, 16), **params, **FAST).fit(corpus)
    assert all(np.isfinite(w).all() for w in est.weights_.values())
    assert est.fit_summary_["unsupervised"]["diverged"].startswith(reason)
    start = MatryoshkaAdaptor(dims=(4, 8, 16), **{**FAST, "steps": 0}).fit(corpus)
    assert neighbor_recall(est.transform(corpus, 8), corpus) >= neighbor_recall(start.transform(corpus, 8), corpus) - 1e-9


def test_a_non_float32_memory_map_is_sampled_in_chunks(tmp_path):
    import tracemalloc

    x = np.random.default_rng(0).standard_normal((40_000, 32))
    peaks = {}
    for dtype in ("float32", "float64"):
        np.save(tmp_path / f"{dtype}.npy", x.astype(dtype))  # 5 and 10 MB
        big = np.load(tmp_path / f"{dtype}.npy", mmap_mode="r")
        MatryoshkaAdaptor(dims=(8,), **{**FAST, "steps": 0}).fit(big[:100])  # imports and first-use caches
        tracemalloc.start()
        est = MatryoshkaAdaptor(dims=(8,), max_fit_vectors=500, **{**FAST, "steps": 0}).fit(big)
        peaks[dtype] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert est.fit_summary_["n_fit_vectors"] == 500
    # A float64 map costs no more than a float32 one: only the 500 sampled rows are cast
    # (casting it whole took 5.1 MB more).
    assert peaks["float64"] < peaks["float32"] + 500_000, peaks


def test_saved_and_loaded_adaptor_compares_equal(corpus, tmp_path):
    for dims in ((4, 8), [8, 4], None):
        est = MatryoshkaAdaptor(dims=dims, **{**FAST, "steps": 5}).fit(corpus)
        est.save(tmp_path / "ad")
        assert MatryoshkaAdaptor.load(tmp_path / "ad") == est


def test_learned_rotation_stays_orthogonal_and_round_trips(corpus, tmp_path):
    est = MatryoshkaAdaptor(dims=(4, 8, 32), **{**FAST, "learn_rotation": True}).fit(corpus)
    start = MatryoshkaAdaptor(dims=(4, 8, 32), **{**FAST, "steps": 0}).fit(corpus).weights_["rotation"]
    r = est.weights_["rotation"]
    np.testing.assert_allclose(r.T @ r, np.eye(32), atol=1e-5)  # full-dim cosines unchanged by it
    assert np.abs(r - start).max() > 1e-4  # it did train
    assert not any(k.startswith("rot.") for k in est.weights_)  # saved as a plain matrix
    np.testing.assert_allclose(est.transform(corpus, 8), est.transform(corpus, 8, backend="torch"), atol=1e-5)
    est.save(tmp_path / "ad")
    np.testing.assert_array_equal(MatryoshkaAdaptor.load(tmp_path / "ad").transform(corpus, 8), est.transform(corpus, 8))


def test_every_recipe_is_a_valid_partial_config_and_every_field_a_parameter():
    from matryoshka_adaptor.config import FIELDS, RECIPES, AdaptorConfig

    assert set(MatryoshkaAdaptor._param_names()) == set(FIELDS)
    for name, recipe in RECIPES.items():
        assert set(recipe) <= set(FIELDS)
        assert AdaptorConfig.from_recipe(name) == AdaptorConfig(**recipe, recipe=name)


def test_binary_weight_adds_the_quantisation_aware_term_and_round_trips(corpus, tmp_path):
    base = MatryoshkaAdaptor(dims=(8, 16), **FAST).fit(corpus)
    qat = MatryoshkaAdaptor(dims=(8, 16), binary_weight=1.0, **FAST).fit(corpus)
    assert not np.allclose(base.transform(corpus, 8), qat.transform(corpus, 8))
    qat.save(tmp_path / "q")
    assert MatryoshkaAdaptor.load(tmp_path / "q").get_params()["binary_weight"] == 1.0


def test_a_corpus_only_fit_keeps_the_trailing_half_of_the_pca_coordinates(corpus):
    from matryoshka_adaptor.config import default_architecture

    dims = (16, 32, 64, 128, 256, 384)
    assert default_architecture(384, dims, corpus_only=True) == (192, 192, 192)
    assert default_architecture(384, dims, corpus_only=False) == (384, None, None)
    assert default_architecture(384, dims, corpus_only=True, pca_start=False) == (384, None, None)  # paper recipe
    settings = {k: v for k, v in FAST.items() if k != "learn_rotation"}
    est = MatryoshkaAdaptor(dims=(4, 8, 32), seed=0, **settings).fit(corpus)  # d = 32: the leading 16 adapt
    assert est.fit_summary_["architecture"] == {"hidden_dim": 16, "rotation_dims": 16, "residual_dims": 16}
    w0, w_last, b_last = est.weights_["layers.0.weight"], est.weights_["layers.1.weight"], est.weights_["layers.1.bias"]
    assert not w0[:, 16:].any() and not w_last[16:].any() and not b_last[16:].any() and w_last[:16].any()
    # The trailing 16 output coordinates are the PCA start's (the same seed's untrained fit), the leading
    # 16 were learned.
    start = MatryoshkaAdaptor(dims=(4, 8, 32), seed=0, **{**settings, "steps": 0}).fit(corpus).weights_["rotation"]
    np.testing.assert_allclose(est.weights_["rotation"][:, 16:], start[:, 16:], atol=1e-6)
    assert not np.allclose(est.weights_["rotation"][:, :16], start[:, :16], atol=1e-3)
    full = {"hidden_dim": 32, "rotation_dims": 32, "residual_dims": 32}
    unlabelled = MatryoshkaAdaptor(dims=(4, 8, 32), seed=0, **settings).fit(corpus, corpus[:40])
    assert unlabelled.fit_summary_["architecture"] == full  # query vectors: all coordinates
    labelled = MatryoshkaAdaptor(dims=(4, 8, 32), seed=0, **settings)
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(40)}
    labelled.fit(corpus, corpus[:40], qrels, corpus_ids=[f"d{i}" for i in range(len(corpus))],
                 query_ids=list(qrels))
    assert labelled.fit_summary_["architecture"] == full


def test_large_inputs_get_gram_pca_and_a_rotation_and_residual_learned_in_leading_dims():
    from matryoshka_adaptor.config import default_architecture
    from matryoshka_adaptor.pca import pca_rotation

    wide = (16, 32, 64, 128, 256, 512, 1024, 2048, 3072)
    assert default_architecture(3072, wide, corpus_only=False) == (512, 512, 512)
    assert default_architecture(3072, wide, corpus_only=True) == (512, 512, 512)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1300, 1100)).astype(np.float32) * np.linspace(3, 0.1, 1100, dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    basis = pca_rotation(x, rng)  # Gram + eigh above 1,024 dims
    np.testing.assert_allclose(basis.T @ basis, np.eye(1100), atol=1e-4)
    _, _, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
    assert np.abs(np.sum(basis[:, :5] * vt[:5].T, axis=0)).min() > 0.99  # same leading directions (up to sign)
    est = MatryoshkaAdaptor(dims=(64, 256, 1100), steps=3, progress=False, device="cpu").fit(x)
    assert est.hidden_dim_ == 256  # the largest trained dim <= d/4 = 275
    assert est.fit_summary_["architecture"] == {"hidden_dim": 256, "rotation_dims": 256, "residual_dims": 256}
    r = est.weights_["rotation"]
    np.testing.assert_allclose(r.T @ r, np.eye(1100), atol=1e-4)
    # The residual acts in the leading 256 coordinates only: saved zero-padded, the rest is the rotation's.
    w0, w_last, b_last = est.weights_["layers.0.weight"], est.weights_["layers.1.weight"], est.weights_["layers.1.bias"]
    assert w0.shape == (256, 1100) and not w0[:, 256:].any() and not w_last[256:].any() and not b_last[256:].any()
    assert np.abs(w_last[:256]).max() > 0  # trained
    np.testing.assert_allclose(est.transform(x[:50], 64), est.transform(x[:50], 64, backend="torch"), atol=1e-5)


def test_neighbors_from_corpus_mines_a_sampled_fit_in_every_row_and_is_checked():
    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((300, 16)).astype(np.float32)
    est = MatryoshkaAdaptor(dims=(8, 16), max_fit_vectors=100, neighbors_from="corpus", steps=3, eval_every=2,
                            progress=False, device="cpu").fit(corpus)
    assert est.settings_.neighbors_from == "corpus"
    assert est.fit_summary_["n_fit_vectors"] > 100  # the sample plus neighbour rows found outside it
    with pytest.raises(InputError, match="neighbors_from"):
        MatryoshkaAdaptor(neighbors_from="everything")
    with pytest.raises(InputError, match="rotation_dims"):
        MatryoshkaAdaptor(rotation_dims=0)


def test_auto_temperature_follows_the_spread_of_cosines_and_is_recorded(tmp_path):
    from conftest import clustered
    from matryoshka_adaptor.config import auto_temperature

    spread = clustered(n=200, d=32)
    # A common direction added to every row: cosines bunch near 1, as with e5-style models
    bunched = spread + 3.0 * np.ones(32, dtype=np.float32) / np.sqrt(32)
    bunched = (bunched / np.linalg.norm(bunched, axis=1, keepdims=True)).astype(np.float32)
    fast = dict(dims=(4, 8), steps=5, eval_every=5, progress=False, device="cpu", seed=3)
    wide = MatryoshkaAdaptor(temperature="auto", **fast).fit(spread)
    tight = MatryoshkaAdaptor(temperature="auto", **fast).fit(bunched)
    assert 0 < tight.settings_.temperature < wide.settings_.temperature
    assert tight.settings_.temperature == pytest.approx(auto_temperature(bunched, 3), abs=1e-6)
    assert tight.settings_.temperature == pytest.approx(
        0.05 * np.sqrt(np.std(bunched @ bunched.T) / 0.13), rel=0.1)  # 200 rows: all of them are drawn
    tight.save(tmp_path / "a")
    assert MatryoshkaAdaptor.load(tmp_path / "a").settings_.temperature == tight.settings_.temperature
    # the other random draws do not depend on how the temperature was chosen
    fixed = MatryoshkaAdaptor(temperature=tight.settings_.temperature, **fast).fit(bunched)
    np.testing.assert_array_equal(fixed.transform(bunched, 8), tight.transform(bunched, 8))


def test_supervised_temperature_sets_stage_two_only_and_auto_is_recorded():
    from matryoshka_adaptor.config import auto_temperature

    corpus, doc_topic, queries, query_topic = topic_task()
    qrels = {f"q{i}": {f"d{j}": 1 for j in np.flatnonzero(doc_topic == query_topic[i])} for i in range(60)}
    ids = dict(corpus_ids=[f"d{i}" for i in range(300)], query_ids=[f"q{i}" for i in range(60)])
    params = dict(dims=(4, 8, 32), **{**FAST, "steps": 10, "supervised_steps": 20})

    def fit(labels=True, **kw):
        est = MatryoshkaAdaptor(**params, **kw)
        return est.fit(corpus, queries[:60], qrels, **ids) if labels else est.fit(corpus, queries[:60])

    same = fit(temperature=0.05)
    assert same.settings_.supervised_temperature is None  # None: stage 2 uses temperature
    np.testing.assert_array_equal(fit(temperature=0.05, supervised_temperature=0.05).transform(corpus, 8),
                                  same.transform(corpus, 8))
    assert not np.array_equal(fit(temperature=0.05, supervised_temperature=0.5).transform(corpus, 8),
                              same.transform(corpus, 8))
    # a fit without labels has no stage 2: the setting changes nothing
    np.testing.assert_array_equal(fit(False, temperature=0.05, supervised_temperature=0.5).transform(corpus, 8),
                                  fit(False, temperature=0.05).transform(corpus, 8))
    # the default "auto": the reference 0.05 in supervised fits, scaled to the cosines' spread without labels
    assert fit().settings_.temperature == 0.05
    scaled = fit(False).settings_.temperature
    assert scaled == pytest.approx(auto_temperature(corpus, 0), abs=1e-6) and abs(scaled - 0.05) > 1e-3
    for bad in (0, "auto"):
        with pytest.raises(InputError, match="supervised_temperature"):
            MatryoshkaAdaptor(supervised_temperature=bad)
