"""Quantised first-stage search and the funnel (prefix search, then rescoring), numpy only.

Three storage precisions for a (prefix) vector of ``dim`` numbers:

* ``float32``: ``4 * dim`` bytes, scored by inner product (vectors are unit length).
* ``int8``: ``dim`` bytes. Each dimension is mapped linearly onto 256 levels between its
  minimum and maximum over the *corpus* (the calibration set), exactly as
  ``sentence_transformers.quantization.quantize_embeddings(x, "int8", ranges=...)`` does; its
  formula is reproduced here (tested equal to it) so that applying an index needs numpy only.
  Documents are stored as codes; a query stays float32 and is scored against the decoded
  codes (the asymmetric distance of faiss's ``IndexScalarQuantizer``): a query costs no storage.
* ``binary``: ``ceil(dim / 8)`` bytes, the sign bits (``x > 0``) packed with ``np.packbits``
  (sentence-transformers' ``ubinary``). Query and documents are both binarised and ranked by
  Hamming distance, computed exactly as ``(bits - <±1, ±1>) / 2`` with one BLAS product per
  block (much faster in numpy than xor + popcount, same integers).
* ``binary-centered``: as ``binary``, after subtracting the corpus mean of each dimension, so that
  each bit splits the corpus near its median instead of at zero (embeddings are not centred:
  many dims are positive for most documents and their bit says little).
* ``binary-itq``: as ``binary-centered``, then rotated by an orthogonal ``dim x dim`` matrix learned
  on the corpus by iterative quantisation (ITQ, Gong & Lazebnik 2011, the algorithm of faiss's
  ``ITQMatrix``) so that variance is spread over the bits before taking signs.

The centred/ITQ variants store one mean vector (and one rotation) per index, not per vector:
bytes/vector is the same as ``binary``. The queries go through the same transform.

Ties (frequent with Hamming distances) are broken deterministically everywhere: **higher score
first, then lower document row number**. The whole tie group at the k-th place is considered,
so the result does not depend on how the corpus is split into blocks.

The funnel (:func:`funnel_search`) takes a shortlist of ``S`` rows from the quantised prefix
and reorders it with full-dimension float32 vectors (the originals, or an adaptor's full-dim
adapted vectors); ``S = 0`` returns the first stage as is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

PRECISIONS = ("float32", "int8", "binary", "binary-centered", "binary-itq")
BINARY_PRECISIONS = ("binary", "binary-centered", "binary-itq")

# Corpus rows per matrix product in QuantizedVectors.search. BLAS rounds a float inner product
# differently with the shape of the product (OpenBLAS on AMD EPYC: ~1 ulp apart between a block
# of 37 rows and one of 500), so products over fixed row tiles keep scores, and the order of
# near-ties, independent of how the corpus is split into blocks.
SCORE_TILE_ROWS = 4096


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}.")
    return precision


def bytes_per_vector(dim: int, precision: str) -> int:
    """Stored bytes of one ``dim``-number vector at ``precision`` (float32: 4/number, int8: 1, binary: 1/8)."""
    check_precision(precision)
    if precision == "float32":
        return 4 * dim
    if precision == "int8":
        return dim
    return (dim + 7) // 8


def fit_binary_transform(calibration: np.ndarray, precision: str, *, seed: int = 0, max_iter: int = 50
                         ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The (mean, rotation) applied before taking sign bits, fitted on the calibration vectors (the corpus).

    ``binary``: (None, None). ``binary-centered``: the per-dimension mean, no rotation.
    ``binary-itq``: the mean and the ITQ rotation ``R`` (codes are the signs of ``(x - mean) @ R``):
    from a seeded random orthogonal start, ``max_iter`` alternations of ``B = sign(V R)`` and the
    orthogonal Procrustes step ``R = U W^T`` (``U S W^T`` = SVD of ``V^T B``), V the centred vectors.
    This is faiss's ``ITQMatrix`` algorithm; written in numpy because faiss's fit took 53 s against
    7.6 s here on SciFact's 5,183 x 384 (one thread), with a lower quantisation loss
    (the test suite checks it against faiss).
    """
    check_precision(precision)
    if precision not in BINARY_PRECISIONS or precision == "binary":
        return None, None
    x = np.asarray(calibration, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 2:
        raise InputError(f"{precision} calibration needs an (n >= 2, dim) array; got shape {x.shape}.")
    if not np.isfinite(x).all():
        raise InputError(f"{precision} calibration vectors contain NaN or infinite values; clean them first.")
    mean = x.mean(axis=0).astype(np.float32)
    if precision == "binary-centered":
        return mean, None
    v = x - mean
    d = x.shape[1]
    rotation = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))[0].astype(np.float32)
    for _ in range(max_iter):
        codes = np.where(v @ rotation >= 0, 1.0, -1.0).astype(np.float32)
        u, _, wt = np.linalg.svd((v.T @ codes).astype(np.float64))
        rotation = (u @ wt).astype(np.float32)
    return mean, rotation


def binary_codes(x: np.ndarray, mean: np.ndarray | None = None, rotation: np.ndarray | None = None) -> np.ndarray:
    """Packed sign bits of ``(x - mean) @ rotation`` (each step skipped when None)."""
    x = np.asarray(x, dtype=np.float32)
    if mean is not None:
        x = x - mean
    if rotation is not None:
        x = x @ rotation
    return quantize_binary(x)


def int8_ranges(calibration: np.ndarray) -> np.ndarray:
    """Per-dimension ``[min; max]`` (shape ``(2, dim)``) of the calibration vectors (the corpus)."""
    x = np.asarray(calibration, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputError(f"int8 calibration needs a non-empty (n, dim) array; got shape {x.shape}.")
    return np.stack([x.min(axis=0), x.max(axis=0)]).astype(np.float32)


def _steps(ranges: np.ndarray) -> np.ndarray:
    steps = (ranges[1] - ranges[0]) / 255
    return np.where(steps == 0, 1, steps).astype(np.float32)


def quantize_int8(x: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """int8 codes of ``x`` (sentence-transformers' int8 scheme; values outside the ranges are clipped)."""
    x = np.asarray(x, dtype=np.float32)
    if ranges.shape != (2, x.shape[1]):
        raise InputError(f"int8 ranges have shape {ranges.shape}, expected (2, {x.shape[1]}) for these vectors.")
    levels = np.clip(np.floor((x - ranges[0]) / _steps(ranges)), 0, 255)
    return (levels - 128).astype(np.int8)


def dequantize_int8(codes: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """The centre of each code's bucket, as float32."""
    return (ranges[0] + (codes.astype(np.float32) + 128.5) * _steps(ranges)).astype(np.float32)


def quantize_binary(x: np.ndarray) -> np.ndarray:
    """Sign bits (``x > 0``) packed 8 per byte, shape ``(n, ceil(dim / 8))`` uint8."""
    return np.packbits(np.asarray(x) > 0, axis=1)


def _signs(bits: np.ndarray, dim: int) -> np.ndarray:
    return np.unpackbits(bits, axis=1, count=dim).astype(np.float32) * 2 - 1


def hamming_distances(query_bits: np.ndarray, corpus_bits: np.ndarray, dim: int) -> np.ndarray:
    """Exact Hamming distances (int32, ``(n_queries, n_corpus)``) between packed sign vectors of ``dim`` bits."""
    agree = _signs(query_bits, dim) @ _signs(corpus_bits, dim).T  # = dim - 2 * hamming, exact in float32
    return np.rint((dim - agree) / 2).astype(np.int32)


def _rank_rows(idx: np.ndarray, sc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k best (score desc, index asc) of candidate lists (rows may hold -inf padding)."""
    order = np.lexsort((idx, -sc), axis=1)[:, :k]
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(sc, order, axis=1)


def topk_deterministic(scores: np.ndarray, k: int, *, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top-k columns per row of a score block, ordered by score descending then column ascending.

    Every column tied with the k-th best score competes, so the choice among ties is by index
    and never by where a partition happened to cut. Returns (indices + offset, scores).
    """
    n_rows, n_cols = scores.shape
    k = min(k, n_cols)
    if k == 0:
        return np.empty((n_rows, 0), np.int64), np.empty((n_rows, 0), scores.dtype)
    if k < n_cols:
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]
        ties = scores >= kth[:, None]
        width = int(ties.sum(axis=1).max())
        if width == k:  # no tie crosses the cut: the k columns are fixed
            cand = np.nonzero(ties)[1].reshape(n_rows, k)
        else:  # pad each row's candidates (all columns scoring >= k-th) to a common width
            cand = np.full((n_rows, width), n_cols, dtype=np.int64)
            for r in range(n_rows):
                c = np.flatnonzero(ties[r])
                cand[r, : len(c)] = c
    else:
        cand = np.tile(np.arange(n_cols), (n_rows, 1))
    padded = np.concatenate([scores, np.full((n_rows, 1), -np.inf, dtype=np.float64)], axis=1) \
        if cand.max(initial=0) == n_cols else scores
    sc = np.take_along_axis(padded, cand, axis=1)
    idx, sc = _rank_rows(cand.astype(np.int64), sc, k)
    return idx + offset, sc


@dataclass
class QuantizedVectors:
    """Corpus (prefix) vectors stored at one precision, searchable by :meth:`search`.

    Build with :meth:`encode`; ``ranges`` is the int8 calibration, ``mean`` / ``rotation`` the
    transform before the sign bits of ``binary-centered`` / ``binary-itq`` (None otherwise).
    """

    precision: str
    dim: int
    codes: np.ndarray
    ranges: np.ndarray | None = None
    mean: np.ndarray | None = None
    rotation: np.ndarray | None = None

    @classmethod
    def encode(cls, vectors: np.ndarray, precision: str, *, ranges: np.ndarray | None = None,
               mean: np.ndarray | None = None, rotation: np.ndarray | None = None, seed: int = 0) -> QuantizedVectors:
        """Quantise (unit-length) vectors.

        int8 calibrates on ``vectors`` unless ``ranges`` is given; ``binary-centered`` and
        ``binary-itq`` fit their mean (and rotation, seeded by ``seed``) on ``vectors`` unless
        ``mean`` (and ``rotation``) are given.
        """
        check_precision(precision)
        x = np.asarray(vectors, dtype=np.float32)
        if precision == "float32":
            return cls(precision, x.shape[1], np.ascontiguousarray(x))
        if precision == "int8":
            ranges = int8_ranges(x) if ranges is None else np.asarray(ranges, dtype=np.float32)
            return cls(precision, x.shape[1], quantize_int8(x, ranges), ranges)
        if precision != "binary" and (mean is None or (precision == "binary-itq" and rotation is None)):
            mean, rotation = fit_binary_transform(x, precision, seed=seed)
        d = x.shape[1]
        if mean is not None and np.shape(mean) != (d,):
            raise InputError(f"{precision} mean has shape {np.shape(mean)}, expected ({d},) for these vectors.")
        if rotation is not None and np.shape(rotation) != (d, d):
            raise InputError(f"{precision} rotation has shape {np.shape(rotation)}, expected ({d}, {d}).")
        return cls(precision, d, binary_codes(x, mean, rotation), None, mean, rotation)

    @property
    def bytes_per_vector(self) -> int:
        return bytes_per_vector(self.dim, self.precision)

    def __len__(self) -> int:
        return self.codes.shape[0]

    def scores(self, queries: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Scores (higher is better) of float32 queries against corpus rows ``start:stop``.

        float32 and int8: inner product with the (decoded) vectors; binary*: minus the Hamming
        distance between the queries' sign bits (after the stored mean/rotation) and the stored bits.
        """
        q = np.asarray(queries, dtype=np.float32)
        if q.shape[1] != self.dim:
            raise InputError(f"queries have {q.shape[1]} dims but the stored vectors have {self.dim}.")
        block = self.codes[start:stop]
        if self.precision == "float32":
            return q @ block.T
        if self.precision == "int8":
            return q @ dequantize_int8(block, self.ranges).T
        return -hamming_distances(binary_codes(q, self.mean, self.rotation), block, self.dim)

    def search(self, queries: np.ndarray, k: int, *, block_rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows per query (indices, scores), score descending then row ascending.

        ``block_rows`` bounds memory (queries x block_rows scores at once); it is rounded up to a
        multiple of ``SCORE_TILE_ROWS`` and never changes a score or the result.
        """
        n = len(self)
        step = -(-block_rows // SCORE_TILE_ROWS) * SCORE_TILE_ROWS
        best_i = best_s = None
        for start in range(0, n, step):
            stop = min(start + step, n)
            s = np.concatenate([self.scores(queries, t, min(t + SCORE_TILE_ROWS, stop))
                                for t in range(start, stop, SCORE_TILE_ROWS)], axis=1).astype(np.float64)
            i, s = topk_deterministic(s, k, offset=start)
            if best_i is None:
                best_i, best_s = i, s
            else:
                best_i, best_s = _rank_rows(np.concatenate([best_i, i], 1), np.concatenate([best_s, s], 1), k)
        return best_i, best_s


def rescore(query_full: np.ndarray, corpus_full: np.ndarray, candidates: np.ndarray, k: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Reorder each query's candidate rows by inner product with full float32 vectors; keep k.

    ``corpus_full`` may be memory-mapped: only the candidate rows are read.
    """
    q = np.asarray(query_full, dtype=np.float32)
    rows = np.unique(candidates)
    pos = np.searchsorted(rows, candidates)
    vecs = np.asarray(corpus_full[rows], dtype=np.float32)
    sc = np.empty(candidates.shape, dtype=np.float64)
    for qs in range(0, len(q), 64):  # bounds the (queries x shortlist x dim) gather
        sc[qs:qs + 64] = np.einsum("qd,qsd->qs", q[qs:qs + 64], vecs[pos[qs:qs + 64]])
    return _rank_rows(candidates.astype(np.int64), sc, min(k, candidates.shape[1]))


def funnel_search(
    query_prefix: np.ndarray,
    first_stage: QuantizedVectors,
    k: int,
    *,
    shortlist: int = 0,
    query_full: np.ndarray | None = None,
    corpus_full: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Funnel search: top ``shortlist`` rows on the quantised prefix, rescored with full vectors.

    Parameters
    ----------
    query_prefix : (n_queries, first_stage.dim) float32
        Queries in the first stage's space (e.g. an adaptor's prefix), unit length.
    first_stage : QuantizedVectors
        The stored corpus prefix.
    k : int
        Results per query.
    shortlist : int
        Candidates taken from the first stage and rescored; 0 returns the first stage's top k.
    query_full, corpus_full : arrays, needed when ``shortlist > 0``
        Full-dimension float32 vectors of the queries and of the corpus (same row order).

    Returns
    -------
    indices, scores : (n_queries, k) arrays, best first (score descending, then row ascending).
        Scores are first-stage scores when ``shortlist == 0``, else full-vector inner products.
        With ``0 < shortlist < k`` only ``shortlist`` results come back.
    """
    if shortlist < 0:
        raise InputError(f"shortlist must be >= 0 (0: no rescoring); got {shortlist}.")
    if shortlist == 0:
        return first_stage.search(query_prefix, k)
    if query_full is None or corpus_full is None:
        raise InputError("rescoring (shortlist > 0) needs query_full and corpus_full vectors.")
    if len(corpus_full) != len(first_stage):
        raise InputError(f"corpus_full has {len(corpus_full)} rows but the first stage has {len(first_stage)}.")
    cand, _ = first_stage.search(query_prefix, shortlist)
    return rescore(query_full, corpus_full, cand, k)
