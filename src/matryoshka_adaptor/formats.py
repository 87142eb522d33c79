"""Embedding files: ``.npy`` (memory-mapped), ``.npz`` and Parquet (embedding list column + id column).

Outputs are written to a temporary file next to the target and renamed into
place, so an interrupted job never leaves a truncated file under the final name.
"""

from __future__ import annotations

import csv
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .atomic import atomic_path, check_writable  # noqa: F401  (atomic_path re-exported)
from .errors import InputError
from .validation import check_chunk_rows  # noqa: F401  (re-exported)

SUFFIXES = (".npy", ".npz", ".parquet")
DEFAULT_EMBEDDING_COLUMN = "embedding"
DEFAULT_ID_COLUMN = "id"
DEFAULT_NPZ_KEY = "embeddings"
DEFAULT_NPZ_IDS = "ids"


def file_kind(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}.")
    return suffix[1:]


def check_distinct_paths(in_path: str | Path, out_path: str | Path) -> None:
    """Refuse to write the output over the input: it would be replaced while (or before) it is read."""
    in_path, out_path = Path(in_path), Path(out_path)
    same = in_path.resolve() == out_path.resolve()
    if not same and out_path.exists():
        try:
            same = os.path.samefile(in_path, out_path)
        except OSError:
            same = False
    if same:
        raise InputError(f"the output {out_path} is the input file; write to a new path (the input would be replaced).")


def _ids_to_str(values, where: str) -> list[str]:
    missing = [i for i, v in enumerate(values) if v is None]
    if missing:
        raise InputError(f"{where} has {len(missing)} null id(s) (first: row {missing[0]}); every row needs an id. "
                         "Fill them, or drop the id column to use row numbers.")
    return [str(v) for v in values]


def _pick_npz_array(path: Path, names: list[str], column: str | None, id_key: str) -> str:
    if column is not None:
        if column not in names:
            raise InputError(f"{path} has no array {column!r}; it has {names}. Pass --column with one of those.")
        return column
    if DEFAULT_NPZ_KEY in names:
        return DEFAULT_NPZ_KEY
    candidates = [k for k in names if k != id_key]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise InputError(f"{path} holds no embedding array (arrays: {names}); save one with "
                         f"np.savez(path, {DEFAULT_NPZ_KEY}=vectors).")
    raise InputError(f"{path} holds several arrays {names} and none is named {DEFAULT_NPZ_KEY!r}; "
                     "pass --column NAME (API: column=NAME) to say which one holds the vectors.")


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


def _parquet_file(path: Path, **kw):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path, **kw)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path} could not be read as Parquet ({exc}); the file is damaged or not Parquet.") from exc


def _parquet_columns(path: Path, names: list[str], column: str | None, id_column: str | None) -> tuple[str, str | None]:
    """The embedding column and the id column (None: the file has no ids) of a Parquet file."""
    col = column or DEFAULT_EMBEDDING_COLUMN
    if col not in names:
        raise InputError(f"{path} has no column {col!r} (columns: {names}); pass --column NAME.")
    if id_column is not None and id_column not in names:
        raise InputError(f"{path} has no id column {id_column!r} (columns: {names}); pass --id-column with one of "
                         "those, or leave it out to use the 'id' column or row numbers.")
    idc = id_column or DEFAULT_ID_COLUMN
    return col, (idc if idc in names else None)


def read_embeddings(
    path: str | Path, *, column: str | None = None, id_column: str | None = None, mmap: bool = True
) -> tuple[np.ndarray, list[str] | None]:
    """Read vectors (and ids, where the file has them). ``.npy`` is memory-mapped.

    ``.npz``: the array named ``column``, else ``embeddings``, else the only array besides the ids;
    several candidate arrays without a name to choose by are an error, never a guess.
    Parquet: ``id_column`` must exist when given; null ids are an error.
    """
    import pyarrow as pa

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file.")
    kind = file_kind(path)
    try:
        if kind == "npy":
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False), None
        if kind == "npz":
            with np.load(path, allow_pickle=False) as z:
                id_key = id_column or DEFAULT_NPZ_IDS
                if id_column is not None and id_column not in z.files:
                    raise InputError(f"{path} has no id array {id_column!r}; it has {z.files}.")
                key = _pick_npz_array(path, list(z.files), column, id_key)
                ids = _ids_to_str(z[id_key].tolist(), str(path)) if id_key in z.files else None
                return z[key], ids
        pf = _parquet_file(path)
        col, idc = _parquet_columns(path, pf.schema_arrow.names, column, id_column)
        table = pf.read(columns=[col] + ([idc] if idc else []))
        ids = _ids_to_str(table.column(idc).to_pylist(), f"{path} column {idc!r}") if idc else None
        return _parquet_to_numpy(table.column(col)), ids
    except InputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, pa.ArrowException) as exc:
        raise InputError(f"{path} could not be read as {kind} ({exc}); the file is damaged or not {kind}.") from exc


def write_embeddings(path: str | Path, vectors: np.ndarray, ids: list[str] | None = None) -> Path:
    """Write vectors (float32) and optional ids atomically, by the file's suffix."""
    path = Path(path)
    kind = file_kind(path)
    vectors = np.asarray(vectors, dtype=np.float32)
    with atomic_path(path) as tmp:
        if kind == "npy":
            with open(tmp, "wb") as f:
                np.save(f, vectors)
        elif kind == "npz":
            extra = {DEFAULT_NPZ_IDS: np.asarray(ids, dtype=str)} if ids is not None else {}
            with open(tmp, "wb") as f:
                np.savez(f, **{DEFAULT_NPZ_KEY: vectors}, **extra)
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

    chunk_rows = check_chunk_rows(chunk_rows)
    in_kind, out_kind = file_kind(in_path), file_kind(out_path)
    in_path, out_path = Path(in_path), Path(out_path)
    if not in_path.is_file():
        raise InputError(f"{in_path} does not exist or is not a file.")
    check_distinct_paths(in_path, out_path)
    check_writable(out_path)
    if in_kind == "parquet":
        import pyarrow as pa

        # pre_buffer (pyarrow's default) keeps the column chunks read so far allocated: streaming a
        # 3 GB file peaked at 3.3 GB RSS with it and at ~0.2 GB without (docs/performance.md).
        pf = _parquet_file(in_path, pre_buffer=False, buffer_size=1 << 20)
        col, idc = _parquet_columns(in_path, pf.schema_arrow.names, column, id_column)
        n = pf.metadata.num_rows

        def batches():
            offset = 0
            try:
                for rb in pf.iter_batches(batch_size=chunk_rows, columns=[col] + ([idc] if idc else [])):
                    x = _parquet_to_numpy(rb.column(col))
                    ids = _ids_to_str(rb.column(idc).to_pylist(), f"{in_path} column {idc!r} (from row {offset})") \
                        if idc else None
                    yield offset, x, ids
                    offset += len(x)
            except (pa.ArrowException, OSError) as exc:
                raise InputError(f"{in_path} could not be read as Parquet after row {offset} ({exc}); "
                                 "the file is damaged.") from exc
    elif in_kind == "npy" and (plain := _npy_plain_layout(in_path)) is not None:
        # Read chunks with plain file reads, not a memory map: mapped pages would stay resident
        # and count in the process's RSS until the kernel evicts them.
        (n, d), dtype, data_start = plain

        def batches():
            with open(in_path, "rb") as f:
                f.seek(data_start)
                for s in range(0, n, chunk_rows):
                    rows = min(chunk_rows, n - s)
                    x = np.empty((rows, d), dtype=dtype)
                    # readinto, not np.fromfile: numpy turns a Ctrl-C / SIGTERM raised inside fromfile
                    # into "TypeError: expected str, bytes or os.PathLike object".
                    got = f.readinto(x.reshape(-1).view(np.uint8))
                    if got != x.nbytes:
                        raise InputError(f"{in_path} is truncated: its header promises {n} rows but the data "
                                         f"ends in row {s + got // (d * x.itemsize)}; re-create the file.")
                    yield s, x, None
    else:
        x_all, ids_all = read_embeddings(in_path, column=column, id_column=id_column)
        if x_all.ndim != 2:
            raise InputError(f"{in_path} holds an array of shape {x_all.shape}; embeddings must be 2-D (n_vectors, dim).")
        n = x_all.shape[0]

        def batches():
            for s in range(0, n, chunk_rows):
                yield s, x_all[s : s + chunk_rows], None if ids_all is None else ids_all[s : s + chunk_rows]

    if n == 0:
        raise InputError(f"{in_path} holds no vectors; nothing to transform.")
    bar = tqdm(total=n, desc="transform", unit="vec", disable=not progress)
    written = 0
    with atomic_path(out_path) as tmp:
        if out_kind == "npy":
            # Header, then rows appended chunk by chunk: memory stays at one chunk.
            with open(tmp, "wb") as f:
                np.lib.format.write_array_header_2_0(
                    f, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
                        "shape": (n, dim)})
                for s, x, _ in batches():
                    f.write(_checked(apply(np.asarray(x), s), len(x), dim).astype("<f4", copy=False).tobytes())
                    written += len(x)
                    bar.update(len(x))
        elif out_kind == "parquet":
            import pyarrow.parquet as pq

            writer = None
            try:
                for s, x, ids in batches():
                    table = _to_table(_checked(apply(np.asarray(x), s), len(x), dim), ids)
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table)
                    written += len(x)
                    bar.update(len(x))
            finally:
                if writer is not None:
                    writer.close()
        else:  # npz holds everything in one zip member, so it is assembled in memory
            parts, all_ids = [], []
            for s, x, ids in batches():
                parts.append(_checked(apply(np.asarray(x), s), len(x), dim))
                all_ids.extend(ids or [])
                written += len(x)
                bar.update(len(x))
            extra = {DEFAULT_NPZ_IDS: np.asarray(all_ids, dtype=str)} if all_ids else {}
            with open(tmp, "wb") as f:
                np.savez(f, **{DEFAULT_NPZ_KEY: np.concatenate(parts)}, **extra)
        if written != n:  # never rename a short file over the target
            raise InputError(f"{in_path} promised {n} rows but {written} were read; the file is damaged.")
    bar.close()
    return n


def _checked(out: np.ndarray, rows: int, dim: int) -> np.ndarray:
    """The chunk's result as C-ordered float32 after checking its shape and finiteness."""
    out = np.ascontiguousarray(out, dtype=np.float32)
    if out.shape != (rows, dim):
        raise InputError(f"the transform returned shape {out.shape} for a chunk of {rows} rows; expected {(rows, dim)}.")
    if not np.isfinite(out).all():
        raise InputError("the transform produced NaN or infinite values; the adaptor's weights are unusable "
                         "(refit it). Nothing was written.")
    return out


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
            try:
                grade = int(float(row[-1]))
            except (ValueError, OverflowError):
                raise InputError(f"{path} line {row_no + 1}: the score {row[-1]!r} is not a number; "
                                 "expected query-id, corpus-id, score (an integer grade).") from None
            qrels.setdefault(row[0], {})[row[1]] = grade
    return qrels


def read_query_groups(path: str | Path, query_ids: list[str], *, what: str = "queries") -> list[str]:
    """The group of each of ``query_ids`` from a TSV of query-id, group (optional header ``query-id``);
    an id without a group fails (``what`` names the ids in the message)."""
    groups: dict[str, str] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for row_no, row in enumerate(csv.reader(f, delimiter="\t")):
            if not row or (row_no == 0 and row[0] == "query-id"):
                continue
            if len(row) != 2 or not row[1]:
                raise InputError(f"{path} line {row_no + 1}: expected query-id, group (two tab-separated "
                                 f"columns); got {row}.")
            groups[row[0]] = row[1]
    missing = [q for q in query_ids if q not in groups]
    if missing:
        raise InputError(f"{path} has no group for {len(missing)} of the {len(query_ids)} {what} (first: "
                         f"{missing[0]!r}); give each of them a group.")
    return [groups[q] for q in query_ids]
