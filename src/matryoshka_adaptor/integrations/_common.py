"""What the LangChain and LlamaIndex wrappers share: load the adaptor, check the dim, adapt lists of floats."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..estimator import MatryoshkaAdaptor
from ..validation import check_output_dim


def prepare(adaptor: MatryoshkaAdaptor | str | Path, dim: int | None) -> tuple[MatryoshkaAdaptor, int]:
    """The fitted adaptor (loaded when given a folder) and the checked output dim (default: full)."""
    if not isinstance(adaptor, MatryoshkaAdaptor):
        adaptor = MatryoshkaAdaptor.load(adaptor)
    adaptor._check_fitted()
    return adaptor, check_output_dim(dim, adaptor.input_dim_)


def adapt(adaptor: MatryoshkaAdaptor, dim: int, vectors) -> list[list[float]]:
    """Base-model vectors (a list of lists) -> adapted, cut to ``dim``, unit length, as lists of floats."""
    if len(vectors) == 0:
        return []
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise InputError(f"the base embeddings returned ragged or non-numeric vectors (shape {x.shape}).")
    return adaptor.transform(x, dim=dim).tolist()
