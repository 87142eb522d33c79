"""Apply an adaptor to Parquet shards on a Ray cluster (local or existing), shard by shard, resumably.

Reading and the numpy forward pass run on the cluster's workers (Ray Data ``read_parquet`` and
``map_batches``, fused into one task per block); the adapted vectors,
``dim`` floats a row and usually a fraction of the input, stream back to the driver in input order,
which writes one output shard per input shard. Each output shard is written to a temporary file and
renamed into place when its last row is in, so an output file exists only when it is complete: a
rerun skips those (same row count as the input shard) and redoes the rest.

    from matryoshka_adaptor.distributed.ray_transform import transform_parquet_shards
    transform_parquet_shards("my-adaptor/", "corpus-shards/", "corpus-64/", dim=64, num_workers=8)
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..formats import DEFAULT_EMBEDDING_COLUMN, DEFAULT_ID_COLUMN, _parquet_to_numpy, _to_table

_PATH_COLUMN = "path"  # added by read_parquet(include_paths=True): which shard a row came from
_TMP_PREFIX = ".partial-"


@dataclass
class ShardReport:
    """What ``transform_parquet_shards`` did."""

    written: list[str] = field(default_factory=list)  # output shards written by this run
    skipped: list[str] = field(default_factory=list)  # output shards already complete, left as they were
    rows_written: int = 0
    seconds: float = 0.0


def list_shards(source: str | Path) -> list[Path]:
    """Parquet shards named by a folder (its ``*.parquet`` files), a glob, or one file, sorted by name."""
    text = str(source)
    if any(ch in text for ch in "*?["):
        paths = [Path(p) for p in glob.glob(text)]
    elif Path(text).is_dir():
        paths = list(Path(text).glob("*.parquet"))
    elif Path(text).is_file():
        paths = [Path(text)]
    else:
        raise InputError(f"{source} is neither a folder, a Parquet file nor a glob that matches files.")
    paths = sorted(p for p in paths if p.is_file() and p.suffix.lower() == ".parquet" and not p.name.startswith("."))
    if not paths:
        raise InputError(f"{source} holds no .parquet files; give a folder of shards, a glob such as 'data/*.parquet', or a file.")
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InputError(f"two input shards are both named {dup!r}; output shards are named after input shards, "
                         "so give shards with distinct names.")
    return paths


def _check_shard(path: Path, column: str, input_dim: int) -> int:
    """Row count of a shard, after checking (from its metadata) that it has a usable embedding column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path} could not be read as Parquet ({exc}).") from exc
    schema = pf.schema_arrow
    if column not in schema.names:
        raise InputError(f"{path} has no column {column!r} (columns: {schema.names}); pass --column NAME.")
    kind = schema.field(column).type
    if pa.types.is_fixed_size_list(kind) and kind.list_size != input_dim:
        raise InputError(f"{path}: column {column!r} holds {kind.list_size}-dim vectors but the adaptor expects "
                         f"{input_dim}; use vectors from the model the adaptor was fitted on.")
    if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        raise InputError(f"{path}: column {column!r} has type {kind}, not a list of floats (one vector per row).")
    return pf.metadata.num_rows


def _complete(out: Path, rows: int) -> bool:
    """An output shard counts as done only if it is a readable Parquet file with every row."""
    import pyarrow.parquet as pq

    if not out.is_file():
        return False
    try:
        return pq.ParquetFile(out).metadata.num_rows == rows
    except Exception:  # a foreign or damaged file: redo it (it is replaced atomically)
        return False


_ADAPTORS: dict[str, object] = {}  # per worker process: weights ref -> NumpyAdaptor, built once


def _adapt_batch(batch, *, weights_ref, dim: int, input_dim: int, column: str, id_column: str | None):
    """Ray Data ``map_batches`` function: the numpy forward pass on one batch (a pyarrow table).

    A function run as tasks, not an actor pool: Ray Data fuses it with the Parquet read into one
    task, so the d-dim input never leaves the worker that read it, and no actor holds a CPU that a
    read task waits for. The adaptor is built once per worker process from the weights stored
    once in the object store.
    """
    import pyarrow as pa
    import ray

    from ..inference import NumpyAdaptor

    key = weights_ref.hex()
    if key not in _ADAPTORS:
        # One thread per task: the tasks are the parallelism (Ray reserves one CPU for each).
        _ADAPTORS[key] = NumpyAdaptor(ray.get(weights_ref), n_threads=1)
    x = _parquet_to_numpy(batch.column(column))
    paths = batch.column(_PATH_COLUMN)
    if x.shape[1] != input_dim:
        raise InputError(f"{paths[0]}: vectors of dimension {x.shape[1]}, but the adaptor expects {input_dim}.")
    try:
        y = _ADAPTORS[key].apply(x, dim)
    except InputError as exc:  # name the shard (row numbers are within the batch)
        raise InputError(f"{paths[0]}: {exc}") from None
    ids = None if id_column is None else [str(v) for v in batch.column(id_column).to_pylist()]
    return _to_table(y, ids).append_column(_PATH_COLUMN, paths.cast(pa.string()))


@contextlib.contextmanager
def ray_session(address: str | None, num_workers: int, progress: bool):
    """Ray, connected (a local instance with ``num_workers`` CPUs when none is given or running, stopped
    at the end), with Ray Data set to return rows in input order (shard order, then file order)."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError("the Ray engine needs Ray Data: `pip install 'matryoshka-adaptor[ray]'`.") from exc
    started = _connect(address, num_workers)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = progress
        yield ray
    finally:
        if started:
            ray.shutdown()


def _connect(address: str | None, num_workers: int) -> bool:
    """Connect to Ray; returns True when this call started a local instance (and so must stop it)."""
    import ray

    if ray.is_initialized():
        return False
    if address:  # an existing cluster: "ray://head:10001" (Ray Client), "auto" or "host:6379"
        ray.init(address=address, log_to_driver=False)
        return False
    ray.init(num_cpus=num_workers, include_dashboard=False, log_to_driver=False)
    return True


def transform_parquet_shards(
    adaptor,
    source: str | Path,
    out_dir: str | Path,
    *,
    dim: int | None = None,
    column: str | None = None,
    id_column: str | None = None,
    num_workers: int = 2,
    batch_rows: int = 8192,
    ray_address: str | None = None,
    progress: bool = False,
) -> ShardReport:
    """Adapt every Parquet shard of ``source`` into ``out_dir/<shard name>`` with Ray Data.

    Parameters
    ----------
    adaptor : a fitted ``MatryoshkaAdaptor`` or the path of an adaptor folder.
    source : a folder of ``.parquet`` shards, a glob (``"data/part-*.parquet"``) or one file.
    out_dir : folder for the output shards (same names as the inputs; ids kept, order kept).
    dim : output dimension (default: full).
    column, id_column : embedding and id columns (default ``embedding`` and ``id``; ids are
        carried over when the input has them).
    num_workers : tasks applying the adaptor at once (one CPU each).
    batch_rows : rows per ``map_batches`` call.
    ray_address : an existing cluster (``ray://head:10001``, ``auto``); default: the Ray instance
        this process is already connected to, else a local one with ``num_workers`` CPUs, stopped
        at the end.
    progress : show Ray Data's progress bars.

    Returns
    -------
    ShardReport : shards written and shards skipped because they were already complete.
    """
    import time

    import pyarrow.parquet as pq

    from ..estimator import MatryoshkaAdaptor
    from ..validation import check_output_dim

    started = time.perf_counter()
    est = adaptor if isinstance(adaptor, MatryoshkaAdaptor) else MatryoshkaAdaptor.load(adaptor)
    est._check_fitted()
    dim = check_output_dim(dim, est.input_dim_)
    if num_workers < 1:
        raise InputError(f"num_workers must be at least 1; got {num_workers}.")
    column = column or DEFAULT_EMBEDDING_COLUMN
    shards = list_shards(source)
    rows = {p: _check_shard(p, column, est.input_dim_) for p in shards}
    idc = id_column or DEFAULT_ID_COLUMN
    has_ids = {idc in pq.ParquetFile(p).schema_arrow.names for p in shards}
    if len(has_ids) > 1:
        raise InputError(f"some shards of {source} have an id column {idc!r} and some do not; give all or none.")
    idc = idc if has_ids.pop() else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f"{_TMP_PREFIX}*"):  # left by an interrupted run; never a finished shard
        stale.unlink()
    report = ShardReport()
    pending = []
    for p in shards:
        if _complete(out_dir / p.name, rows[p]):
            report.skipped.append(str(out_dir / p.name))
        else:
            pending.append(p)
    if not pending:
        report.seconds = time.perf_counter() - started
        return report

    with ray_session(ray_address, num_workers, progress) as ray:
        by_name = {str(p.resolve()): p for p in pending}
        ds = ray.data.read_parquet([str(p.resolve()) for p in pending], include_paths=True)
        ds = ds.select_columns([column] + ([idc] if idc else []) + [_PATH_COLUMN])
        ds = ds.map_batches(_adapt_batch, batch_size=batch_rows, batch_format="pyarrow", num_cpus=1,
                            compute=ray.data.TaskPoolStrategy(size=num_workers),
                            fn_kwargs=dict(weights_ref=ray.put(est.weights_), dim=dim, input_dim=est.input_dim_,
                                           column=column, id_column=idc))
        current, writer, written_rows = None, None, 0

        def finish():
            nonlocal writer
            writer.close()
            writer = None
            src = by_name[current]
            if written_rows != rows[src]:
                raise RuntimeError(f"{src}: {written_rows} rows came back for {rows[src]} in the shard")
            os.replace(out_dir / f"{_TMP_PREFIX}{src.name}", out_dir / src.name)  # complete: now it counts
            report.written.append(str(out_dir / src.name))
            report.rows_written += written_rows

        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                paths = batch.column(_PATH_COLUMN).to_pylist()
                # A batch may straddle two shards: split it where the source path changes.
                cuts = [0] + [i for i in range(1, len(paths)) if paths[i] != paths[i - 1]] + [len(paths)]
                for a, b in zip(cuts[:-1], cuts[1:]):
                    part = batch.slice(a, b - a).drop_columns([_PATH_COLUMN])
                    path = _normalise(paths[a], by_name)
                    if path != current:
                        if writer is not None:
                            finish()
                        current, written_rows = path, 0
                        writer = pq.ParquetWriter(out_dir / f"{_TMP_PREFIX}{by_name[path].name}", part.schema)
                    writer.write_table(part)
                    written_rows += b - a
            if writer is not None:
                finish()
        except BaseException as exc:
            if writer is not None:
                writer.close()
            for stale in out_dir.glob(f"{_TMP_PREFIX}*"):
                stale.unlink()
            cause = _input_error_in(exc)
            if cause is not None:
                raise cause from None
            raise
    report.seconds = time.perf_counter() - started
    return report


def _normalise(path: str, by_name: dict[str, Path]) -> str:
    """Ray reports paths without a filesystem scheme; map one back to the shard it names."""
    if path in by_name:
        return path
    resolved = str(Path(path).resolve())
    if resolved in by_name:
        return resolved
    raise RuntimeError(f"Ray returned rows of an unknown shard {path!r}")


def _input_error_in(exc: BaseException) -> InputError | None:
    """The user's InputError inside a Ray task error, so the CLI can print its one line."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, InputError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    # Ray re-raises worker exceptions as its own types; the message keeps the original's line.
    lines = [ln for ln in str(exc).splitlines() if "InputError: " in ln]
    return InputError(lines[0].split("InputError: ", 1)[1].strip()) if lines else None


__all__: Sequence[str] = ("ShardReport", "list_shards", "ray_session", "transform_parquet_shards")
