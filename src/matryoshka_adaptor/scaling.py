"""Choices that keep a fit practical on high-dimensional (API-sized, 1,536-3,072-dim) vectors.

Measured in docs/performance.md ("High-dimensional inputs"): on a 2-core CPU a default fit on
50,000 x 3,072 vectors spends its time in the SVD for the PCA start, in the d x d Cayley solve of
the learned rotation (every step) and in the d x d hidden layer. Above ``LARGE_INPUT_DIM`` the
PCA basis comes from the d x d Gram matrix, the rotation is learned only inside the leading PCA
coordinates, and the hidden layer is narrower; at or below it nothing changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Inputs wider than this use the large-input choices (768- and 1,024-dim models keep the defaults
# the quality results in docs/results.md were measured with).
LARGE_INPUT_DIM = 1024


def uncentred_pca_basis(sample: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Orthogonal (d, d) basis of the uncentred PCA of unit rows, leading directions first (float32).

    Up to ``LARGE_INPUT_DIM`` it is the SVD of the sample (as fits have always used); above, the
    eigenvectors of the d x d Gram matrix, which cost one GEMM over the sample and a d x d
    eigendecomposition instead of an n x d SVD (50,000 x 3,072: the SVD took 13 min on 2 cores).
    """
    n, d = sample.shape
    if d > LARGE_INPUT_DIM and n >= d:
        gram = (sample.T @ sample).astype(np.float64)
        values, vectors = np.linalg.eigh(gram)
        return np.ascontiguousarray(vectors[:, np.argsort(-values, kind="stable")], dtype=np.float32)
    _, _, vt = np.linalg.svd(sample.astype(np.float64), full_matrices=False)
    rotation = vt.T.astype(np.float32)
    if rotation.shape[1] < d:  # fewer samples than dims: complete the basis
        q, _ = np.linalg.qr(np.concatenate([rotation, rng.standard_normal((d, d - rotation.shape[1]))], 1))
        rotation = np.concatenate([rotation, q[:, rotation.shape[1] :]], 1).astype(np.float32)
    return rotation


def large_input_architecture(d: int, dims: Sequence[int]) -> tuple[int, int | None]:
    """(hidden width, learned rotation dims) for input dim ``d``: (d, None = all) up to ``LARGE_INPUT_DIM``.

    Above it: hidden width d/4, and the rotation learned in the leading ``r`` PCA coordinates, r the
    largest trained dim up to d/4 (3,072 with the default dims: hidden 768, r = 512), so each step
    solves an r x r Cayley system instead of a d x d one.
    """
    if d <= LARGE_INPUT_DIM:
        return d, None
    quarter = d // 4
    small = [m for m in dims if m <= quarter]
    return quarter, (max(small) if small else quarter)
