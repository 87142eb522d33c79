"""The benchmark's funnel run through LanceDB tables (``benchmark --store lancedb``)."""

from __future__ import annotations

import tempfile

import numpy as np

from .funnel import FunnelIndex


class LanceFunnelStore:
    """One temporary LanceDB table per (prefix dim, precision, full vectors), reused across shortlists."""

    def __init__(self, seed: int = 0):
        self.seed = seed  # of binary-itq rotations, as in the numpy store
        self._dir = tempfile.TemporaryDirectory(prefix="ma-bench-lancedb-")
        self._tables: dict[tuple, FunnelIndex] = {}

    def search(self, key: tuple, corpus_prefix: np.ndarray, corpus_full: np.ndarray, query_prefix: np.ndarray,
               query_full: np.ndarray | None, precision: str, k: int, shortlist: int) -> np.ndarray:
        index = self._tables.get(key)
        if index is None:
            index = FunnelIndex.from_encoded(self._dir.name, corpus_prefix, corpus_full,
                                             [str(i) for i in range(len(corpus_prefix))], precision=precision,
                                             table=f"t{len(self._tables)}", seed=self.seed)
            self._tables[key] = index
        return index.search_encoded(query_prefix, query_full, k, shortlist).rows

    def close(self) -> None:
        self._tables.clear()
        self._dir.cleanup()
