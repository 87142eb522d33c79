"""Embedding files: ``.npy`` (memory-mapped), ``.npz`` and Parquet (embedding list column + id column).

Outputs are written to a temporary file next to the target and renamed into
place, so an interrupted job never leaves a truncated file under the final name.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import InputError

SUFFIXES = (".npy", ".npz", ".parquet")
DEFAULT_EMBEDDING_COLUMN = "embedding"
DEFAULT_ID_COLUMN = "id"


def file_kind(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}.")
    return suffix[1:]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it to ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _parquet_to_numpy(column) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    if n == 0:
        return np.empty((0, 0), dtype=np.float32)
    if column.null_count:
        raise InputError("the embedding column has null rows; drop them or fill them before use.")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if lengths.min() != lengths.max():
        raise InputError(
            f"the embedding column has rows of different lengths ({lengths.min()} to {lengths.max()}); "
            "all embeddings must have the same dimension."
        )
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(n, int(lengths[0]))


def read_embeddings(
    path: str | Path, *, column: str | None = None, id_column: str | None = None, mmap: bool = True
) -> tuple[np.ndarray, list[str] | None]:
    """Read vectors (and ids, where the file has them). ``.npy`` is memory-mapped."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file.")
    kind = file_kind(path)
    try:
        if kind == "npy":
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False), None
        if kind == "npz":
            with np.load(path, allow_pickle=False) as z:
                key = column or ("embeddings" if "embeddings" in z.files else z.files[0])
                if key not in z.files:
                    raise InputError(f"{path} has no array {key!r}; it has {z.files}.")
                ids = [str(i) for i in z[id_column or "ids"]] if (id_column or "ids") in z.files else None
                return z[key], ids
    except (ValueError, OSError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path} could not be read as {kind} ({exc}).") from exc
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    col = column or DEFAULT_EMBEDDING_COLUMN
    if col not in table.column_names:
        raise InputError(f"{path} has no column {col!r} (columns: {table.column_names}); pass --column NAME.")
    idc = id_column or DEFAULT_ID_COLUMN
    ids = [str(v) for v in table.column(idc).to_pylist()] if idc in table.column_names else None
    return _parquet_to_numpy(table.column(col)), ids


def write_embeddings(path: str | Path, vectors: np.ndarray, ids: list[str] | None = None) -> Path:
    """Write vectors (float32) and optional ids atomically, by the file's suffix."""
    path = Path(path)
    kind = file_kind(path)
    vectors = np.asarray(vectors, dtype=np.float32)
    with atomic_path(path) as tmp:
        if kind == "npy":
            np.save(tmp, vectors)
        elif kind == "npz":
            extra = {"ids": np.asarray(ids, dtype=str)} if ids is not None else {}
            with open(tmp, "wb") as f:
                np.savez(f, embeddings=vectors, **extra)
        else:
            import pyarrow.parquet as pq

            pq.write_table(_to_table(vectors, ids), tmp)
    return path


def _to_table(vectors: np.ndarray, ids: list[str] | None):
    import pyarrow as pa

    emb = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1])
    cols = {DEFAULT_EMBEDDING_COLUMN: emb}
    if ids is not None:
        cols = {DEFAULT_ID_COLUMN: pa.array(ids, pa.string()), **cols}
    return pa.table(cols)


def _npy_plain_layout(path) -> tuple[tuple[int, int], np.dtype, int] | None:
    """(shape, dtype, data offset) of a 2-D C-ordered numeric ``.npy``; None for anything else."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                return None
            shape, fortran, dtype = read_header(f)
            start = f.tell()
    except (ValueError, OSError):
        return None  # read_embeddings then gives the precise error
    if fortran or len(shape) != 2 or dtype.hasobject or not (dtype.kind in "fiu"):
        return None
    return shape, dtype, start


def transform_file(
    in_path: str | Path,
    out_path: str | Path,
    apply: Callable[[np.ndarray, int], np.ndarray],
    dim: int,
    *,
    column: str | None = None,
    id_column: str | None = None,
    chunk_rows: int = 65536,
    progress: bool = False,
) -> int:
    """Stream vectors from ``in_path`` through ``apply(chunk, offset)`` into ``out_path``.

    Memory stays bounded by ``chunk_rows`` for ``.npy`` (read and written chunk by chunk)
    and Parquet (record batches); ``.npz`` is loaded whole (it is compressed or zipped).
    Returns the number of rows written.
    """
    from tqdm.auto import tqdm

    in_kind, out_kind = file_kind(in_path), file_kind(out_path)
    if in_kind == "parquet":
        import pyarrow.parquet as pq

        # pre_buffer (pyarrow's default) keeps the column chunks read so far allocated: streaming a
        # 3 GB file peaked at 3.3 GB RSS with it and at ~0.2 GB without (docs/performance.md).
        pf = pq.ParquetFile(in_path, pre_buffer=False, buffer_size=1 << 20)
        col = column or DEFAULT_EMBEDDING_COLUMN
        if col not in pf.schema_arrow.names:
            raise InputError(f"{in_path} has no column {col!r} (columns: {pf.schema_arrow.names}); pass --column NAME.")
        idc = id_column or DEFAULT_ID_COLUMN
        has_ids = idc in pf.schema_arrow.names
        n = pf.metadata.num_rows

        def batches():
            offset = 0
            cols = [col, idc] if has_ids else [col]
            for rb in pf.iter_batches(batch_size=chunk_rows, columns=cols):
                x = _parquet_to_numpy(rb.column(col))
                ids = [str(v) for v in rb.column(idc).to_pylist()] if has_ids else None
                yield offset, x, ids
                offset += len(x)
    elif in_kind == "npy" and (plain := _npy_plain_layout(in_path)) is not None:
        # Read chunks with plain file reads, not a memory map: mapped pages would stay resident
        # and count in the process's RSS until the kernel evicts them.
        (n, d), dtype, data_start = plain

        def batches():
            with open(in_path, "rb") as f:
                f.seek(data_start)
                for s in range(0, n, chunk_rows):
                    rows = min(chunk_rows, n - s)
                    x = np.fromfile(f, dtype=dtype, count=rows * d)
                    if x.size != rows * d:
                        raise InputError(f"{in_path} is truncated: its header promises {n} rows but the data "
                                         f"ends in row {s + x.size // d}; re-create the file.")
                    yield s, x.reshape(rows, d), None
    else:
        x_all, ids_all = read_embeddings(in_path, column=column, id_column=id_column)
        n = x_all.shape[0]

        def batches():
            for s in range(0, n, chunk_rows):
                yield s, x_all[s : s + chunk_rows], None if ids_all is None else ids_all[s : s + chunk_rows]

    if n == 0:
        raise InputError(f"{in_path} holds no vectors; nothing to transform.")
    bar = tqdm(total=n, desc="transform", unit="vec", disable=not progress)
    with atomic_path(out_path) as tmp:
        if out_kind == "npy":
            # Header, then rows appended chunk by chunk: memory stays at one chunk.
            with open(tmp, "wb") as f:
                np.lib.format.write_array_header_2_0(
                    f, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
                        "shape": (n, dim)})
                for s, x, _ in batches():
                    f.write(np.ascontiguousarray(apply(np.asarray(x), s), dtype="<f4").tobytes())
                    bar.update(len(x))
        elif out_kind == "parquet":
            import pyarrow.parquet as pq

            writer = None
            try:
                for s, x, ids in batches():
                    table = _to_table(apply(np.asarray(x), s), ids)
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table)
                    bar.update(len(x))
            finally:
                if writer is not None:
                    writer.close()
        else:  # npz holds everything in one zip member, so it is assembled in memory
            parts, all_ids = [], []
            for s, x, ids in batches():
                parts.append(apply(np.asarray(x), s))
                all_ids.extend(ids or [])
                bar.update(len(x))
            extra = {"ids": np.asarray(all_ids, dtype=str)} if all_ids else {}
            with open(tmp, "wb") as f:
                np.savez(f, embeddings=np.concatenate(parts), **extra)
    bar.close()
    return n


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """A BEIR qrels TSV (query-id, corpus-id, score; optional header) as {query id: {doc id: grade}}."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        for row_no, row in enumerate(reader):
            if not row or (row_no == 0 and row[0] == "query-id"):
                continue
            if len(row) < 3:
                raise InputError(f"{path} line {row_no + 1}: expected query-id, corpus-id, score; got {row}.")
            qrels.setdefault(row[0], {})[row[1]] = int(float(row[-1]))
    return qrels
