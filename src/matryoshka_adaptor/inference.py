"""Apply a fitted adaptor with numpy alone.

An ingestion worker should not need PyTorch to apply an adaptor, so this module
never imports torch. It mirrors ``nn.module.AdaptorNet.forward`` exactly:

    z  = normalise(x) @ R          (R: optional orthogonal rotation, e.g. PCA basis)
    e' = z + MLP(z)                (MLP: Linear -> ReLU -> ... -> Linear)
    out = normalise(e'[:, :dim])
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .errors import AdaptorFileError
from .validation import check_chunk_rows, l2_normalize
from .weight_names import ROTATION, count_layers, layer_bias, layer_weight

# Rows per chunk: bounds the temporary (chunk x hidden) activations to a few MB.
DEFAULT_CHUNK_ROWS = 8192


def _linear_layers(weights: Mapping[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    layers = []
    for i in range(count_layers(weights)):
        w = np.ascontiguousarray(weights[layer_weight(i)].T, dtype=np.float32)  # (in, out)
        b = np.asarray(weights[layer_bias(i)], dtype=np.float32)
        layers.append((w, b))
    return layers


class NumpyAdaptor:
    """A frozen adaptor as numpy matrices; call ``apply`` on chunks of vectors.

    The rotation is folded into the first layer (``z @ R @ W1`` = ``z @ (R W1)``) and only
    the ``dim`` output columns of the rotation and of the last layer are computed, so a
    64-dim transform of 384-dim vectors costs ~0.6x the multiply-adds of the plain forward.
    The per-``dim`` matrices are built once and kept contiguous for BLAS.

    Parameters
    ----------
    weights : mapping of str to ndarray
        Weights named as :mod:`matryoshka_adaptor.weight_names` says.

    Attributes
    ----------
    rotation : ndarray of shape (d, d) or None
        The input rotation.
    layers : list of (ndarray, ndarray)
        Each linear layer as (weight transposed to (in, out), bias).
    """

    def __init__(self, weights: Mapping[str, np.ndarray]):
        bad = [k for k, v in weights.items() if not np.isfinite(np.asarray(v)).all()]
        if bad:
            raise AdaptorFileError(f"adaptor weights {sorted(bad)} hold NaN or infinite values; "
                                   "the adaptor is unusable, refit it.")
        rotation = weights.get(ROTATION)
        self.rotation = None if rotation is None else np.ascontiguousarray(rotation, dtype=np.float32)
        self.layers = _linear_layers(weights)
        if self.layers:
            w0, b0 = self.layers[0]
            self._first = (w0 if self.rotation is None else (self.rotation.astype(np.float64) @ w0).astype(np.float32), b0)
        self._per_dim: dict[int, tuple] = {}

    def _cut(self, dim: int) -> tuple:
        if dim not in self._per_dim:
            rot = None if self.rotation is None else np.ascontiguousarray(self.rotation[:, :dim])
            w_last, b_last = self._first if len(self.layers) == 1 else self.layers[-1]
            self._per_dim[dim] = (rot, np.ascontiguousarray(w_last[:, :dim]), np.ascontiguousarray(b_last[:dim]))
        return self._per_dim[dim]

    def apply(self, x: np.ndarray, dim: int, *, offset: int = 0) -> np.ndarray:
        """Adapted vectors for ``x`` (rows already checked for shape), cut to ``dim`` and unit length."""
        z = l2_normalize(np.asarray(x, dtype=np.float32), offset=offset)
        rot, w_last, b_last = self._cut(dim)
        out = z[:, :dim] if rot is None else z @ rot  # the first `dim` rotated coordinates
        if self.layers:
            if len(self.layers) == 1:
                h = z @ w_last + b_last
            else:
                w0, b0 = self._first
                h = np.maximum(z @ w0 + b0, 0.0)
                for w, b in self.layers[1:-1]:
                    h = np.maximum(h @ w + b, 0.0)
                h = h @ w_last + b_last
            out = out + h
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.maximum(norms, 1e-12, out=norms)
        out = (out / norms).astype(np.float32, copy=False)
        if not np.isfinite(out).all():  # finite weights can still overflow: never return NaN silently
            raise AdaptorFileError("the adaptor produced NaN or infinite values (its weights are too large); refit it.")
        return out

    def apply_chunked(
        self, x: np.ndarray, dim: int, *, chunk_rows: int = DEFAULT_CHUNK_ROWS, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Apply to a large (possibly memory-mapped) array chunk by chunk, writing into ``out``."""
        chunk_rows = check_chunk_rows(chunk_rows)
        n = x.shape[0]
        if out is None:
            out = np.empty((n, dim), dtype=np.float32)
        for start in range(0, n, chunk_rows):
            stop = min(start + chunk_rows, n)
            out[start:stop] = self.apply(np.asarray(x[start:stop]), dim, offset=start)
        return out
