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
