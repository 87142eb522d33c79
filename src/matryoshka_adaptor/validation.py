"""Input checks shared by fitting, transforming and evaluation (numpy only).

Every error says what is wrong and how to fix it, because these are the first
messages a new user sees when their vectors are not what they think.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .errors import InputError  # noqa: F401  (re-exported: raised by every check here)


def check_embeddings(
    x,
    *,
    name: str = "embeddings",
    expected_dim: int | None = None,
    allow_empty: bool = False,
) -> np.ndarray:
    """Return ``x`` as a 2-D float32 array after checking it is usable.

    Checks shape (2-D, non-empty), dtype (real numbers), finiteness and that no
    row is the zero vector (its direction, and so its cosine, is undefined).
    Memory-mapped input stays memory-mapped when it already is float32.
    """
    if x is None:
        raise InputError(f"{name} is None; pass a 2-D array of shape (n_vectors, dim).")
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as exc:  # pragma: no cover - numpy's own message is kept
            raise InputError(f"{name} could not be read as an array: {exc}") from exc
    if x.ndim == 1:
        raise InputError(
            f"{name} is 1-D with shape {x.shape}; pass a 2-D array of shape (n_vectors, dim). "
            "For a single vector use x.reshape(1, -1)."
        )
    if x.ndim != 2:
        raise InputError(f"{name} must be 2-D (n_vectors, dim); got shape {x.shape}.")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise InputError(f"{name} has dtype {x.dtype}; embeddings must be real numbers (float32 recommended).")
    if x.shape[0] == 0 and not allow_empty:
        raise InputError(f"{name} is empty (0 vectors); pass at least one vector.")
    if x.shape[1] == 0:
        raise InputError(f"{name} has 0 dimensions; pass vectors of shape (n_vectors, dim) with dim >= 1.")
    if expected_dim is not None and x.shape[1] != expected_dim:
        raise InputError(
            f"{name} have dimension {x.shape[1]} but this adaptor expects {expected_dim}; "
            "use vectors from the same embedding model the adaptor was fitted on."
        )
    if x.dtype != np.float32:
        wide = x
        with np.errstate(over="ignore"):  # overflow is reported just below
            x = x.astype(np.float32)
        if wide.dtype.itemsize > 4 and np.isinf(x).any() and np.isfinite(wide).all():
            raise InputError(f"{name} hold values beyond float32's range (about 3.4e38); rescale the vectors "
                             "(only their direction matters) before passing them.")
    return x


def _finite_nonzero_scaled(x: np.ndarray, name: str, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows divided by their largest magnitude, that magnitude) after the finite / non-zero checks.

    Scaling first keeps the norm exact for any finite input: 1e30 squared overflows float32 and
    1e-30 squared underflows to 0, but scaled entries lie in [-1, 1].
    """
    finite = np.isfinite(x)
    if not finite.all():
        bad = np.flatnonzero(~finite.all(axis=1))
        raise InputError(
            f"{name} contain NaN or infinite values in {bad.size} row(s) (first: row {int(bad[0]) + offset}); "
            "drop or re-embed those rows before fitting or transforming."
        )
    scale = np.abs(x).max(axis=1, keepdims=True)
    zero = scale[:, 0] == 0
    if zero.any():
        bad = np.flatnonzero(zero)
        raise InputError(
            f"{name} contain {bad.size} zero vector(s) (first: row {int(bad[0]) + offset}); a zero vector has no "
            "direction, so cosine similarity is undefined. Remove those rows (often empty texts) first."
        )
    return x / scale, scale[:, 0]


def check_finite_nonzero(x: np.ndarray, *, name: str = "embeddings", offset: int = 0) -> np.ndarray:
    """Check a (chunk of an) embedding matrix for NaN/inf and zero rows; return the row norms (float64).

    ``offset`` is added to reported row numbers so that chunked callers report
    positions in the whole file.
    """
    scaled, scale = _finite_nonzero_scaled(np.asarray(x), name, offset)
    return scale.astype(np.float64) * np.linalg.norm(scaled, axis=1)


def l2_normalize(x: np.ndarray, *, name: str = "embeddings", offset: int = 0) -> np.ndarray:
    """Validate rows (finite, non-zero) and scale them to unit length (exact for huge and tiny values)."""
    x = np.asarray(x)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing norm sends the row to the scaled path
        norms = np.linalg.norm(x, axis=1, keepdims=True)
    # Fast path: a finite norm means no entry is NaN/inf and no square overflowed; above 1e-12 the
    # squares that underflow (|v| < 1e-19) change it by less than 1e-11 relative.
    if norms.size and np.isfinite(norms).all() and (norms > 1e-12).all():
        return (x / norms).astype(np.float32, copy=False)
    scaled, _ = _finite_nonzero_scaled(x, name, offset)
    return (scaled / np.linalg.norm(scaled, axis=1, keepdims=True)).astype(np.float32, copy=False)


def check_chunk_rows(chunk_rows) -> int:
    """``chunk_rows`` as a positive int, or :class:`InputError` (a chunk of 0 or -1 rows reads nothing)."""
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise InputError(f"chunk_rows must be a whole number >= 1 (rows per chunk, e.g. 8192); got {chunk_rows!r}.")
    return int(chunk_rows)


def check_dims(dims: Iterable[int] | int, input_dim: int | None = None) -> tuple[int, ...]:
    """Return the Matryoshka dims sorted and de-duplicated, after checking each is in 1..input_dim."""
    if isinstance(dims, (int, np.integer)):
        dims = (int(dims),)
    try:
        values = [int(m) for m in dims]
    except (TypeError, ValueError) as exc:
        raise InputError(f"dims must be a list of positive integers, e.g. (32, 64, 128); got {dims!r}.") from exc
    if not values:
        raise InputError("dims is empty; give at least one target dimension, e.g. dims=(64, 128).")
    for m in values:
        if m <= 0:
            raise InputError(f"dimension {m} is not positive; every Matryoshka dim must be >= 1.")
        if input_dim is not None and m > input_dim:
            raise InputError(
                f"dimension {m} is larger than the embedding dimension {input_dim}; "
                f"choose dims between 1 and {input_dim}."
            )
    return tuple(sorted(set(values)))


def check_output_dim(dim: int | None, input_dim: int) -> int:
    """Check a requested output dimension for ``transform``; ``None`` means full dimension."""
    if dim is None:
        return input_dim
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool):
        raise InputError(f"dim must be an integer between 1 and {input_dim}; got {dim!r}.")
    if dim <= 0 or dim > input_dim:
        raise InputError(f"dim={dim} is out of range; this adaptor gives 1 to {input_dim} dimensions.")
    return int(dim)


def check_ids(ids: Sequence[str] | None, n: int, *, name: str) -> list[str]:
    """Return ids as strings, one per row; default ids are the row numbers."""
    if ids is None:
        return [str(i) for i in range(n)]
    ids = [str(i) for i in ids]
    if len(ids) != n:
        raise InputError(f"{name} has {len(ids)} ids but {n} vectors; give exactly one id per row.")
    if len(set(ids)) != len(ids):
        raise InputError(f"{name} contains duplicate ids; ids must be unique.")
    return ids


def check_query_groups(groups, n: int) -> np.ndarray:
    """Integer codes, one per query row, for ``query_groups`` (str or int labels; equal labels, one group)."""
    if isinstance(groups, (str, bytes)) or not hasattr(groups, "__len__"):
        raise InputError("query_groups must be a sequence with one label (str or int) per query row, "
                         "e.g. the topic or source document each query is about.")
    if len(groups) != n:
        raise InputError(f"query_groups has {len(groups)} labels but there are {n} queries; give one label per query row.")
    bad = [i for i, g in enumerate(groups) if not isinstance(g, (str, int, np.integer)) or isinstance(g, bool)]
    if bad:
        raise InputError(f"query_groups labels must be str or int, got {groups[bad[0]]!r} for query row {bad[0]}; "
                         "give each query its topic's name or number.")
    # codes in order of first appearance: the split then depends on which queries share a group, not on the names
    code: dict[str, int] = {}
    return np.array([code.setdefault(str(g), len(code)) for g in groups], dtype=np.int64)


def check_qrels(
    qrels: Mapping[str, Mapping[str, float]],
    query_ids: Sequence[str],
    corpus_ids: Sequence[str],
) -> dict[str, dict[str, float]]:
    """Check that qrels name only known query and document ids and keep those with a positive grade."""
    if not qrels:
        raise InputError("qrels is empty; give {query_id: {doc_id: grade}} with at least one positive grade.")
    known_q = set(query_ids)
    known_d = set(corpus_ids)
    unknown_q = [q for q in qrels if str(q) not in known_q]
    if unknown_q:
        raise InputError(
            f"qrels name {len(unknown_q)} query id(s) not in query_ids (first: {unknown_q[0]!r}); "
            "pass query_ids in the same order as the query vectors."
        )
    cleaned: dict[str, dict[str, float]] = {}
    for q, docs in qrels.items():
        unknown_d = [d for d in docs if str(d) not in known_d]
        if unknown_d:
            raise InputError(
                f"qrels for query {q!r} name document id {unknown_d[0]!r}, which is not in corpus_ids; "
                "pass corpus_ids in the same order as the corpus vectors."
            )
        graded = {str(d): float(g) for d, g in docs.items()}
        if any(g > 0 for g in graded.values()):
            cleaned[str(q)] = graded
    if not cleaned:
        raise InputError("qrels have no positive grade; supervised training needs relevant (grade > 0) documents.")
    return cleaned
