"""A LangChain ``Embeddings`` that applies an adaptor to any other LangChain ``Embeddings``.

Shrinking a RAG pipeline's vectors is one line::

    embeddings = HuggingFaceEmbeddings(model_name="sentence-transformers/all-MiniLM-L6-v2")
    embeddings = AdaptedEmbeddings(embeddings, "minilm-adaptor/", dim=64)   # the one line
    store = InMemoryVectorStore(embedding=embeddings)
"""

from __future__ import annotations

from pathlib import Path

from langchain_core.embeddings import Embeddings

from ..estimator import MatryoshkaAdaptor
from ._common import adapt, prepare


class AdaptedEmbeddings(Embeddings):
    """``base``'s vectors through ``adaptor``, cut to ``dim`` and L2-normalised.

    Parameters
    ----------
    base : langchain_core.embeddings.Embeddings
        The embeddings the adaptor was fitted on (the same model; any provider).
    adaptor : MatryoshkaAdaptor or path
        A fitted adaptor or its folder.
    dim : int, optional
        Output dimension, 1 to the adaptor's input dim (default: full).

    Notes
    -----
    Queries and documents go through the same adaptor; the base's own query/document handling
    (prefixes, input types) is kept because ``embed_query`` and ``embed_documents`` call the
    base's methods of the same name. The adaptor runs on numpy.
    """

    def __init__(self, base: Embeddings, adaptor: MatryoshkaAdaptor | str | Path, dim: int | None = None):
        self.base = base
        self.adaptor, self.dim = prepare(adaptor, dim)

    def __repr__(self) -> str:
        return f"AdaptedEmbeddings({self.base!r}, dim={self.dim})"

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return adapt(self.adaptor, self.dim, self.base.embed_documents(texts))

    def embed_query(self, text: str) -> list[float]:
        return adapt(self.adaptor, self.dim, [self.base.embed_query(text)])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return adapt(self.adaptor, self.dim, await self.base.aembed_documents(texts))

    async def aembed_query(self, text: str) -> list[float]:
        return adapt(self.adaptor, self.dim, [await self.base.aembed_query(text)])[0]
