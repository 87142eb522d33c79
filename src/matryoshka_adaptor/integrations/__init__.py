"""Drop an adaptor into the tools people already use: sentence-transformers, LangChain, LlamaIndex.

Each submodule imports its library on use; install the ``integrations`` extra
(``pip install 'matryoshka-adaptor[integrations]'``).
"""
