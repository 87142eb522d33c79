"""Principal axes of a set of unit vectors (numpy only): the adaptor's PCA start and the PCA baseline."""

from __future__ import annotations

import numpy as np

from .config import LARGE_INPUT_DIM


def principal_axes(x: np.ndarray, *, centered: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(mean, axes): the rows of ``axes`` (float64, (min(n, d), d)) are the principal directions of ``x``.

    Uncentred by default (``mean`` is zero): projecting without subtracting a mean keeps inner
    products comparable to cosine search on the originals, and the axes form an orthogonal rotation,
    so full-dimension cosines are unchanged while the leading coordinates carry the most energy.
    """
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(0) if centered else np.zeros(x.shape[1])
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt


def pca_rotation(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A (d, d) float32 orthogonal matrix whose columns are the uncentred principal axes of ``x``.

    With fewer rows than dims the basis is completed with random orthogonal directions (from ``rng``).
    Above ``LARGE_INPUT_DIM`` dims (and with at least as many rows) the axes are the eigenvectors of
    the d x d Gram matrix: one GEMM over the rows and a d x d eigendecomposition instead of an
    n x d SVD (50,000 x 3,072: the SVD took 13 min on 2 cores; docs/performance.md).
    """
    n, d = x.shape
    if d > LARGE_INPUT_DIM and n >= d:
        gram = (x.T @ x).astype(np.float64)
        values, vectors = np.linalg.eigh(gram)
        return np.ascontiguousarray(vectors[:, np.argsort(-values, kind="stable")], dtype=np.float32)
    rotation = principal_axes(x)[1].T.astype(np.float32)
    if rotation.shape[1] < d:
        q, _ = np.linalg.qr(np.concatenate([rotation, rng.standard_normal((d, d - rotation.shape[1]))], 1))
        rotation = np.concatenate([rotation, q[:, rotation.shape[1] :]], 1).astype(np.float32)
    return rotation
