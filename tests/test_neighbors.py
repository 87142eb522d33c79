import numpy as np
import pytest

from matryoshka_adaptor.neighbors import exact_topk, faiss_topk, mine_neighbors, torch_topk


def brute(q, c, k, exclude=None):
    s = q @ c.T
    if exclude is not None:
        s[np.arange(len(q)), exclude] = -np.inf
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(s, idx, 1)


def test_blockwise_exact_equals_brute_force(corpus):
    q = corpus[:50]
    res = exact_topk(q, corpus, 7, block_rows=16, block_cols=33)
    idx, sc = brute(q, corpus, 7)
    np.testing.assert_allclose(res.scores, sc, atol=1e-6)
    np.testing.assert_array_equal(res.indices, idx)


def test_exclude_self(corpus):
    res = exact_topk(corpus, corpus, 5, exclude=np.arange(len(corpus)), block_cols=64)
    assert not (res.indices == np.arange(len(corpus))[:, None]).any()
    idx, _ = brute(corpus, corpus, 5, exclude=np.arange(len(corpus)))
    np.testing.assert_array_equal(res.indices, idx)


def test_faiss_reports_recall(corpus):
    pytest.importorskip("faiss")
    res = faiss_topk(corpus, corpus, 5, exclude=np.arange(len(corpus)), recall_sample=100)
    assert res.method == "faiss-hnsw" and res.indices.shape == (len(corpus), 5)
    assert 0.9 <= res.recall_at_k <= 1.0


@pytest.mark.parametrize("exclude", [False, True])
def test_torch_blockwise_equals_numpy(corpus, exclude):
    ex = np.arange(len(corpus)) if exclude else None
    ref = exact_topk(corpus, corpus, 6, exclude=ex)
    got = torch_topk(corpus, corpus, 6, exclude=ex, block_rows=37, block_cols=51)
    np.testing.assert_array_equal(got.indices, ref.indices)
    np.testing.assert_allclose(got.scores, ref.scores, atol=1e-6)


def test_mine_neighbors_uses_the_fit_device(corpus):
    res = mine_neighbors(corpus[:20], corpus, 3, device="cpu")
    idx, _ = brute(corpus[:20], corpus, 3)
    np.testing.assert_array_equal(res.indices, idx)
    assert res.method == "exact"


def _brute(anchors, corpus_unit, k, exclude):
    s = anchors @ corpus_unit.T
    for i, e in enumerate(exclude):
        if e >= 0:
            s[i, e] = -np.inf
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def test_neighbors_in_corpus_finds_true_neighbours_outside_the_sample(tmp_path):
    from matryoshka_adaptor.neighbors import neighbors_in_corpus

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 16)).astype(np.float32) * 3
    np.save(tmp_path / "c.npy", x)
    corpus = np.load(tmp_path / "c.npy", mmap_mode="r")
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    rows = np.sort(rng.choice(3000, 200, replace=False))
    queries = unit[:5] + 0.01
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    for device in (None, "cpu"):
        table, nb, qnb = neighbors_in_corpus(corpus, rows, unit[rows], 5, queries=queries, method="exact",
                                             device=device)
        np.testing.assert_allclose(table[:200], unit[rows])  # the sample keeps its positions
        # Mapped back through the table, the neighbours are the exact whole-corpus ones (self excluded).
        back = np.concatenate([rows, np.setdiff1d(np.unique(np.concatenate([rows, _brute(unit[rows], unit, 5, rows).ravel(), _brute(queries, unit, 5, -np.ones(5, int)).ravel()])), rows)])
        np.testing.assert_allclose(table, unit[back], atol=1e-6)
        assert (back[nb.indices] == _brute(unit[rows], unit, 5, rows)).mean() > 0.999
        assert (back[qnb.indices] == _brute(queries, unit, 5, -np.ones(5, int))).all()
        assert not (back[nb.indices] == rows[:, None]).any()


def test_ivf_recall_is_measured_and_high_with_enough_probes(tmp_path):
    pytest.importorskip("faiss")
    from matryoshka_adaptor.neighbors import ivf_topk

    rng = np.random.default_rng(1)
    x = rng.standard_normal((5000, 16)).astype(np.float32)
    res = ivf_topk(x[:300] / np.linalg.norm(x[:300], axis=1, keepdims=True), x, 10, exclude=np.arange(300),
                   nprobe=64, recall_sample=100)
    assert res.method == "faiss-ivf" and res.recall_at_k > 0.95
    assert not (res.indices == np.arange(300)[:, None]).any()


def test_fit_with_whole_corpus_neighbours_trains_on_sample_plus_neighbour_rows():
    from matryoshka_adaptor import MatryoshkaAdaptor

    x = np.random.default_rng(2).standard_normal((1200, 24)).astype(np.float32)
    est = MatryoshkaAdaptor(dims=(8, 24), steps=3, max_fit_vectors=100, neighbors_from="corpus", progress=False,
                            device="cpu").fit(x)
    assert 100 < est.fit_summary_["n_fit_vectors"] <= 100 + 100 * 10
    with pytest.raises(Exception, match="neighbors_from must be"):
        MatryoshkaAdaptor(max_fit_vectors=100, neighbors_from="all", progress=False).fit(x)


def test_whole_corpus_neighbours_with_a_fixed_start_train_on_rows_rotated_once(monkeypatch):
    """With a fixed PCA start the training rows are rotated after whole-corpus mining: the table, its
    leading anchors (the sample) and the query anchors all in the rotated space, and consistent."""
    import matryoshka_adaptor.nn.training as training
    from matryoshka_adaptor import MatryoshkaAdaptor

    seen = {}
    original = training.Trainer.__init__

    def capture(self, net, dims, config, data, **kw):
        seen["data"], seen["rotation"] = data, net.rotation.numpy()
        original(self, net, dims, config, data, **kw)

    monkeypatch.setattr(training.Trainer, "__init__", capture)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((900, 24)).astype(np.float32)
    q = rng.standard_normal((40, 24)).astype(np.float32)
    MatryoshkaAdaptor(dims=(8, 24), steps=2, max_fit_vectors=100, neighbors_from="corpus", learn_rotation=False,
                      progress=False, device="cpu").fit(x, q)
    data, rot = seen["data"], seen["rotation"]
    n = data.n_corpus_anchors
    assert n == 100 and len(data.anchors) == 140 and len(data.corpus) > 100
    np.testing.assert_array_equal(data.anchors[:n], data.corpus[:n])
    unit_q = q / np.linalg.norm(q, axis=1, keepdims=True)
    np.testing.assert_allclose(data.anchors[n:], unit_q @ rot, atol=1e-5)
    unit_x = x / np.linalg.norm(x, axis=1, keepdims=True)
    rows = [np.flatnonzero(np.all(np.isclose(unit_x @ rot, r, atol=1e-5), axis=1)) for r in data.corpus[:5]]
    assert all(len(r) == 1 for r in rows)  # each training row is one corpus row, rotated


def _pca_ordered(n, d, seed=0):
    """Unit vectors whose coordinate energy decays like a PCA-rotated embedding's."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32) * np.geomspace(1, 0.02, d, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_prefix_rerank_finds_the_exact_neighbours_of_pca_ordered_vectors_and_measures_recall():
    from matryoshka_adaptor.neighbors import prefix_rerank_topk

    x = _pca_ordered(600, 96)
    res = prefix_rerank_topk(x, x, 5, prefix_dims=24, exclude=np.arange(600), check_rows=600)
    idx, sc = brute(x, x, 5, exclude=np.arange(600))
    agree = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(res.indices, idx)])
    assert res.recall_at_k == pytest.approx(agree)  # measured against exact search on every row here
    assert agree > 0.95
    same = (res.indices == idx).all(1)  # where the candidates held the true top-5, scores and order are exact
    np.testing.assert_allclose(res.scores[same], sc[same], atol=1e-5)
    assert not (res.indices == np.arange(600)[:, None]).any()
    assert res.method == "exact-prefix24-rerank"
    # A prefix of one coordinate cannot find them: the recall says so.
    assert prefix_rerank_topk(x, x, 5, prefix_dims=1, candidates=5, exclude=np.arange(600)).recall_at_k < 0.5


def test_auto_mining_uses_the_prefix_search_only_for_pca_ordered_vectors_above_the_exact_budget(monkeypatch):
    import matryoshka_adaptor.neighbors as nbm

    x = _pca_ordered(300, 64)
    calls = []
    monkeypatch.setattr(nbm, "prefix_rerank_topk", lambda *a, **k: calls.append(1) or "prefix")
    assert mine_neighbors(x, x, 3, device="cpu", pca_ordered=True).method == "exact"  # 5.8e6 multiply-adds
    big = np.lib.stride_tricks.as_strided(x, shape=(300_000, 64), strides=(0, 4))  # 5.8e12, never read
    assert mine_neighbors(big, big, 3, device="cpu", pca_ordered=True) == "prefix" and calls == [1]
