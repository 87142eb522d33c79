"""A LlamaIndex ``BaseEmbedding`` that applies an adaptor to any other LlamaIndex ``BaseEmbedding``.

Shrinking a RAG pipeline's vectors is one line::

    embed_model = HuggingFaceEmbedding(model_name="sentence-transformers/all-MiniLM-L6-v2")
    embed_model = AdaptedEmbedding(embed_model, "minilm-adaptor/", dim=64)   # the one line
    index = VectorStoreIndex(nodes, embed_model=embed_model)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from pydantic import PrivateAttr

from ..estimator import MatryoshkaAdaptor
from ._common import adapt, prepare


class AdaptedEmbedding(BaseEmbedding):
    """``base``'s vectors through ``adaptor``, cut to ``dim`` and L2-normalised.

    Parameters
    ----------
    base : llama_index.core.base.embeddings.base.BaseEmbedding
        The embedding model the adaptor was fitted on (the same model; any provider).
    adaptor : MatryoshkaAdaptor or path
        A fitted adaptor or its folder.
    dim : int, optional
        Output dimension, 1 to the adaptor's input dim (default: full).
    **kwargs
        Further ``BaseEmbedding`` fields (``embed_batch_size`` defaults to the base's).

    Notes
    -----
    Query and text embeddings call the base's public methods, so its own query instructions,
    batching and cache still apply; the adaptor runs on numpy.
    """

    dim: int = 0
    _base: BaseEmbedding = PrivateAttr()
    _adaptor: MatryoshkaAdaptor = PrivateAttr()

    def __init__(self, base: BaseEmbedding, adaptor: MatryoshkaAdaptor | str | Path, dim: int | None = None,
                 **kwargs: Any):
        adaptor, dim = prepare(adaptor, dim)
        kwargs.setdefault("model_name", f"{base.model_name}+matryoshka-adaptor@{dim}")
        kwargs.setdefault("embed_batch_size", base.embed_batch_size)
        super().__init__(dim=dim, **kwargs)
        self._base = base
        self._adaptor = adaptor

    @classmethod
    def class_name(cls) -> str:
        return "MatryoshkaAdaptedEmbedding"

    @property
    def base(self) -> BaseEmbedding:
        return self._base

    def _get_query_embedding(self, query: str) -> Embedding:
        return adapt(self._adaptor, self.dim, [self._base.get_query_embedding(query)])[0]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return adapt(self._adaptor, self.dim, [await self._base.aget_query_embedding(query)])[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return adapt(self._adaptor, self.dim, [self._base.get_text_embedding(text)])[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return adapt(self._adaptor, self.dim, [await self._base.aget_text_embedding(text)])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return adapt(self._adaptor, self.dim, self._base.get_text_embedding_batch(texts))

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return adapt(self._adaptor, self.dim, await self._base.aget_text_embedding_batch(texts))
