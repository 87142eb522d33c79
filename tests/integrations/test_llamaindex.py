"""LlamaIndex: the wrapper over a real BaseEmbedding (the packaged MiniLM) and VectorStoreIndex's SimpleVectorStore."""

import asyncio

import numpy as np
import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("sentence_transformers")

from llama_index.core import VectorStoreIndex  # noqa: E402
from llama_index.core.base.embeddings.base import BaseEmbedding  # noqa: E402
from llama_index.core.schema import TextNode  # noqa: E402
from pydantic import PrivateAttr  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

from matryoshka_adaptor.errors import InputError  # noqa: E402
from matryoshka_adaptor.integrations.llamaindex import AdaptedEmbedding  # noqa: E402
from integrations.conftest import SENTENCES  # noqa: E402

QUERY = "Which drug prevents heart attacks?"


class MiniLMEmbedding(BaseEmbedding):
    """A plain sentence-transformers-backed LlamaIndex embedding (what llama-index-embeddings-huggingface does)."""

    _model: SentenceTransformer = PrivateAttr()

    def __init__(self, path: str, **kwargs):
        super().__init__(model_name="all-MiniLM-L6-v2", **kwargs)
        self._model = SentenceTransformer(path, device="cpu")

    def _get_query_embedding(self, query):
        return self._model.encode(query).tolist()

    async def _aget_query_embedding(self, query):
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text):
        return self._model.encode(text).tolist()

    def _get_text_embeddings(self, texts):
        return self._model.encode(texts).tolist()


@pytest.fixture(scope="module")
def base(minilm_path):
    return MiniLMEmbedding(minilm_path)


def build_index(embed_model):
    """A RAG pipeline's indexing step; only the embed_model passed in changes."""
    return VectorStoreIndex([TextNode(text=t, id_=f"n{i}") for i, t in enumerate(SENTENCES)], embed_model=embed_model)


def test_is_a_llamaindex_embedding_giving_the_adaptors_vectors(base, adaptor_384):
    emb = AdaptedEmbedding(base, adaptor_384, dim=64)
    assert isinstance(emb, BaseEmbedding) and emb.model_name == "all-MiniLM-L6-v2+matryoshka-adaptor@64"
    base_docs = np.asarray(base.get_text_embedding_batch(SENTENCES), np.float32)
    expected = adaptor_384.transform(base_docs, dim=64)
    np.testing.assert_allclose(emb.get_text_embedding_batch(SENTENCES), expected, atol=1e-6)
    np.testing.assert_allclose(emb.get_text_embedding(SENTENCES[0]), expected[0], atol=1e-6)
    q = emb.get_query_embedding(QUERY)
    np.testing.assert_allclose(q, adaptor_384.transform(np.asarray([base.get_query_embedding(QUERY)]), dim=64)[0],
                               atol=1e-6)
    assert asyncio.run(emb.aget_query_embedding(QUERY)) == pytest.approx(q, abs=1e-6)
    assert np.asarray(asyncio.run(emb.aget_text_embedding_batch(SENTENCES[:2]))).shape == (2, 64)


def test_vector_store_index_retrieves_by_the_adapted_vectors(base, adaptor_384):
    index = build_index(AdaptedEmbedding(base, adaptor_384, dim=64))
    stored = index.vector_store.data.embedding_dict  # the in-process SimpleVectorStore
    assert len(stored) == len(SENTENCES) and {len(v) for v in stored.values()} == {64}
    hits = index.as_retriever(similarity_top_k=3).retrieve(QUERY)
    docs = adaptor_384.transform(np.asarray(base.get_text_embedding_batch(SENTENCES)), dim=64)
    query = adaptor_384.transform(np.asarray([base.get_query_embedding(QUERY)]), dim=64)[0]
    scores = docs @ query
    expected = np.argsort(-scores)[:3]
    assert [h.node.get_content() for h in hits] == [SENTENCES[i] for i in expected]
    np.testing.assert_allclose([h.score for h in hits], scores[expected], atol=1e-5)
    full = build_index(base)  # the same pipeline without the adaptor: 384-dim vectors
    assert {len(v) for v in full.vector_store.data.embedding_dict.values()} == {384}


def test_bad_dims_are_refused_at_construction(base, adaptor_384):
    with pytest.raises(InputError, match="1 to 384"):
        AdaptedEmbedding(base, adaptor_384, dim=0)
