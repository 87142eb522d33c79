"""Drop an adaptor into the tools people already use: sentence-transformers, LangChain, LlamaIndex.

``sentence_transformers`` (export as a ``SentenceTransformer`` module), ``langchain``
(``AdaptedEmbeddings``) and ``llamaindex`` (``AdaptedEmbedding``) each import their library
when imported; install the ``integrations`` extra
(``pip install 'matryoshka-adaptor[integrations]'``).
"""
