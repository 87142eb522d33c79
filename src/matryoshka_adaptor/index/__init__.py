"""Funnel search in an embedded vector database (LanceDB): a quantised adaptor prefix for the first
stage, full vectors for rescoring. Needs the ``index`` extra (``pip install 'matryoshka-adaptor[index]'``)."""

from .funnel import AddResult, FunnelIndex, SearchResult, adaptor_fingerprint, iter_arrays, iter_texts, iter_vector_file

__all__ = ["FunnelIndex", "SearchResult", "AddResult", "adaptor_fingerprint", "iter_arrays", "iter_vector_file",
           "iter_texts"]
