import numpy as np
import pytest

from matryoshka_adaptor.errors import InputError
from matryoshka_adaptor.quantization import (
    QuantizedVectors, bytes_per_vector, dequantize_int8, fit_binary_transform, funnel_search, hamming_distances, int8_ranges,
    quantize_binary, quantize_int8, topk_deterministic,
)


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return unit(rng.standard_normal((500, 40))), unit(rng.standard_normal((30, 40)))


def test_bytes_per_vector():
    assert bytes_per_vector(384, "float32") == 1536
    assert bytes_per_vector(384, "int8") == 384
    assert bytes_per_vector(384, "binary") == 48
    assert bytes_per_vector(20, "binary") == 3
    with pytest.raises(InputError, match="unknown precision"):
        bytes_per_vector(8, "int4")


def test_int8_matches_sentence_transformers(data):
    st_quant = pytest.importorskip("sentence_transformers.util.quantization")
    corpus, queries = data
    ranges = int8_ranges(corpus)
    ours = quantize_int8(queries, ranges)
    theirs = st_quant.quantize_embeddings(queries, "int8", ranges=ranges)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(quantize_binary(queries), st_quant.quantize_embeddings(queries, "ubinary"))
    # decoding lands within half a bucket of the value for in-range inputs
    err = np.abs(dequantize_int8(quantize_int8(corpus, ranges), ranges) - corpus)
    assert (err <= (ranges[1] - ranges[0]) / 255 / 2 + 1e-6).all()


def test_hamming_equals_popcount(data):
    corpus, queries = data
    qb, cb = quantize_binary(queries), quantize_binary(corpus)
    ref = np.unpackbits(qb[:, None, :] ^ cb[None, :, :], axis=2).sum(2)
    np.testing.assert_array_equal(hamming_distances(qb, cb, 40), ref)


def test_topk_ties_broken_by_index():
    s = np.array([[1, 3, 3, 3, 0, 3], [5, 5, 5, 5, 5, 5]], dtype=float)
    idx, sc = topk_deterministic(s, 2)
    np.testing.assert_array_equal(idx, [[1, 2], [0, 1]])
    idx, _ = topk_deterministic(s, 6)
    np.testing.assert_array_equal(idx[0], [1, 2, 3, 5, 0, 4])


@pytest.mark.parametrize("precision", ["float32", "int8", "binary", "binary-centered", "binary-itq"])
def test_search_independent_of_blocking(data, precision, monkeypatch):
    import matryoshka_adaptor.quantization as quantization

    monkeypatch.setattr(quantization, "SCORE_TILE_ROWS", 16)  # many tiles, blocks that are not a multiple of one
    corpus, queries = data
    store = QuantizedVectors.encode(corpus[:, :16], precision)
    a = store.search(queries[:, :16], 25)
    b = store.search(queries[:, :16], 25, block_rows=37)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    # scores are non-increasing and ties go by ascending row
    i, s = a
    assert (np.diff(s, axis=1) <= 0).all()
    tie = np.diff(s, axis=1) == 0
    assert (np.diff(i, axis=1)[tie] > 0).all()


def test_float32_search_is_exact(data):
    corpus, queries = data
    i, _ = QuantizedVectors.encode(corpus, "float32").search(queries, 10)
    np.testing.assert_array_equal(i, np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :10])


def test_funnel_recovers_full_ranking(data):
    corpus, queries = data
    first = QuantizedVectors.encode(corpus[:, :8], "binary")
    exact = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :10]
    # a shortlist of the whole corpus rescored with full vectors is exact search
    i, s = funnel_search(queries[:, :8], first, 10, shortlist=len(corpus), query_full=queries, corpus_full=corpus)
    np.testing.assert_array_equal(i, exact)
    np.testing.assert_allclose(s, np.take_along_axis(queries @ corpus.T, exact, 1), rtol=1e-5)
    # larger shortlists never recover fewer of the exact top 10 (on average)
    overlap = []
    for shortlist in (0, 20, 100, 400):
        i, _ = funnel_search(queries[:, :8], first, 10, shortlist=shortlist, query_full=queries, corpus_full=corpus)
        overlap.append(np.mean([len(set(a) & set(b)) for a, b in zip(i, exact)]))
    assert overlap == sorted(overlap) and overlap[-1] > overlap[0]


def test_funnel_bad_input(data):
    corpus, queries = data
    first = QuantizedVectors.encode(corpus[:, :8], "int8")
    with pytest.raises(InputError, match="needs query_full"):
        funnel_search(queries[:, :8], first, 10, shortlist=50)
    with pytest.raises(InputError, match="8 dims|has 40 dims|queries have"):
        first.search(queries, 5)
    with pytest.raises(InputError, match="rows"):
        funnel_search(queries[:, :8], first, 10, shortlist=50, query_full=queries, corpus_full=corpus[:10])


def test_binary_centered_and_itq_codes(data):
    corpus, queries = data
    centred = QuantizedVectors.encode(corpus, "binary-centered")
    np.testing.assert_allclose(centred.mean, corpus.mean(axis=0), atol=1e-6)
    np.testing.assert_array_equal(centred.codes, np.packbits(corpus - centred.mean > 0, axis=1))
    itq = QuantizedVectors.encode(corpus, "binary-itq", seed=3)
    assert itq.bytes_per_vector == centred.bytes_per_vector == bytes_per_vector(40, "binary") == 5
    r = itq.rotation
    np.testing.assert_allclose(r @ r.T, np.eye(40), atol=1e-4)  # orthogonal: a rotation
    np.testing.assert_array_equal(itq.codes, np.packbits((corpus - itq.mean) @ r > 0, axis=1))
    again = QuantizedVectors.encode(corpus, "binary-itq", seed=3)
    np.testing.assert_array_equal(again.rotation, r)  # deterministic with a seed
    # queries go through the same mean and rotation as the stored rows
    q_bits = np.packbits((queries - itq.mean) @ r > 0, axis=1)
    np.testing.assert_array_equal(-itq.scores(queries), hamming_distances(q_bits, itq.codes, 40))
    # a given transform is reused, not refitted
    reused = QuantizedVectors.encode(queries, "binary-itq", mean=itq.mean, rotation=r)
    np.testing.assert_array_equal(reused.codes, q_bits)


def test_itq_and_centering_help_when_variance_is_concentrated():
    """Sign bits of a PCA-like prefix (offset mean, variance in few dims) lose most neighbours;
    centring recovers some and the ITQ rotation much more."""
    rng = np.random.default_rng(0)
    d = 32
    scale = np.geomspace(4, 0.05, d)
    corpus = unit(rng.standard_normal((2000, d)) * scale + np.r_[np.full(4, 3.0), np.zeros(d - 4)])
    queries = unit(corpus[:100] + 0.05 * rng.standard_normal((100, d)))
    true = np.argsort(-(queries @ corpus.T), axis=1)[:, :10]

    def recall(precision):
        idx, _ = QuantizedVectors.encode(corpus, precision).search(queries, 10)
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, true)])

    plain, centred, itq = recall("binary"), recall("binary-centered"), recall("binary-itq")
    assert centred > plain + 0.01
    assert itq > centred + 0.1


def test_binary_transform_bad_input(data):
    corpus, _ = data
    with pytest.raises(InputError, match=r"mean has shape \(3,\), expected \(40,\)"):
        QuantizedVectors.encode(corpus, "binary-centered", mean=np.zeros(3))
    with pytest.raises(InputError, match="rotation has shape"):
        QuantizedVectors.encode(corpus, "binary-itq", mean=np.zeros(40), rotation=np.eye(3))
    with pytest.raises(InputError, match="n >= 2"):
        fit_binary_transform(corpus[:1], "binary-itq")
    bad = corpus.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        fit_binary_transform(bad, "binary-centered")
    assert fit_binary_transform(corpus, "binary") == (None, None)


def test_itq_rotation_as_good_as_faiss():
    """Our ITQ fit reaches a quantisation loss no worse than faiss's ITQTransform on the same data."""
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    x = unit(rng.standard_normal((1500, 24)) * np.geomspace(3, 0.1, 24) + 0.5)
    mean, ours = fit_binary_transform(x, "binary-itq", seed=0)
    ref = faiss.ITQTransform(24, 24, False)
    ref.max_train_per_dim = 1000
    ref.train(x)
    theirs = faiss.vector_to_array(ref.pca_then_itq.A).reshape(24, 24).T

    def loss(rotation):  # ||B - V R||^2 with the best common scale of B, V the centred unit rows
        v = x - mean
        p = (v / np.linalg.norm(v, axis=1, keepdims=True)) @ rotation
        return np.mean((np.sign(p) * np.abs(p).mean() - p) ** 2)

    identity = loss(np.eye(24, dtype=np.float32))
    assert loss(ours) <= loss(theirs) * 1.02 and loss(ours) < 0.9 * identity
