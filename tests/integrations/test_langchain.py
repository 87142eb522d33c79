"""LangChain: the wrapper over the real HuggingFaceEmbeddings (packaged MiniLM) and a real InMemoryVectorStore."""

import asyncio

import numpy as np
import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_huggingface")

from langchain_core.embeddings import Embeddings  # noqa: E402
from langchain_core.vectorstores import InMemoryVectorStore  # noqa: E402
from langchain_huggingface import HuggingFaceEmbeddings  # noqa: E402

from matryoshka_adaptor.errors import InputError  # noqa: E402
from matryoshka_adaptor.integrations.langchain import AdaptedEmbeddings  # noqa: E402
from integrations.conftest import SENTENCES  # noqa: E402

QUERY = "Which drug prevents heart attacks?"


@pytest.fixture(scope="module")
def base(minilm_path):
    return HuggingFaceEmbeddings(model_name=minilm_path, model_kwargs={"device": "cpu"})


def build_store(embeddings):
    """A RAG pipeline's indexing step; only the embeddings object passed in changes."""
    store = InMemoryVectorStore(embedding=embeddings)
    store.add_texts(SENTENCES)
    return store


def test_is_a_langchain_embeddings_giving_the_adaptors_vectors(base, adaptor_384):
    emb = AdaptedEmbeddings(base, adaptor_384, dim=64)
    assert isinstance(emb, Embeddings)
    base_docs = np.asarray(base.embed_documents(SENTENCES), np.float32)
    np.testing.assert_allclose(emb.embed_documents(SENTENCES), adaptor_384.transform(base_docs, dim=64), atol=1e-6)
    q = emb.embed_query(QUERY)
    np.testing.assert_allclose(q, adaptor_384.transform(np.asarray([base.embed_query(QUERY)]), dim=64)[0], atol=1e-6)
    assert asyncio.run(emb.aembed_query(QUERY)) == pytest.approx(q, abs=1e-6)
    assert np.asarray(asyncio.run(emb.aembed_documents(SENTENCES[:2]))).shape == (2, 64)
    assert emb.embed_documents([]) == []


def test_in_memory_vector_store_ranks_by_the_adapted_vectors(base, adaptor_384, tmp_path):
    adaptor_384.save(tmp_path / "ad")
    store = build_store(AdaptedEmbeddings(base, tmp_path / "ad", dim=64))  # a folder works too
    assert {len(doc["vector"]) for doc in store.store.values()} == {64}
    hits = store.similarity_search_with_score(QUERY, k=3)
    docs = adaptor_384.transform(np.asarray(base.embed_documents(SENTENCES)), dim=64)
    query = adaptor_384.transform(np.asarray([base.embed_query(QUERY)]), dim=64)[0]
    scores = docs @ query
    expected = np.argsort(-scores)[:3]
    assert [d.page_content for d, _ in hits] == [SENTENCES[i] for i in expected]
    np.testing.assert_allclose([s for _, s in hits], scores[expected], atol=1e-5)
    full = build_store(base)  # the same pipeline without the adaptor: 384-dim vectors
    assert {len(doc["vector"]) for doc in full.store.values()} == {384}


def test_bad_dims_are_refused_at_construction(base, adaptor_384):
    with pytest.raises(InputError, match="1 to 384"):
        AdaptedEmbeddings(base, adaptor_384, dim=512)

    class Wrong(Embeddings):
        def embed_documents(self, texts):
            return [[0.1] * 32 for _ in texts]

        def embed_query(self, text):
            return [0.1] * 32

    with pytest.raises(InputError, match="384"):
        AdaptedEmbeddings(Wrong(), adaptor_384, dim=64).embed_query("x")
