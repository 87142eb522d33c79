"""Fill a LanceDB funnel table from Parquet shards with Ray: workers encode, the driver commits.

Reading and encoding (the adaptor's prefix and the full vector for rescoring: numpy only,
:func:`~matryoshka_adaptor.index.funnel.encode_rows`) run on the cluster's workers, fused into
one Ray Data task per block as in :mod:`.ray_transform`; the encoded rows stream back to the
driver in input order, which is the table's only writer (LanceDB commits are per writer): it
quantises and appends them with :meth:`FunnelIndex.add_encoded`, one commit per batch. A killed
run leaves the table at its last commit, and a rerun skips the ids already present.

    from matryoshka_adaptor.distributed.ray_index import add_parquet_shards_to_index
    add_parquet_shards_to_index("db/", "corpus-shards/", adaptor="my-adaptor/", num_workers=8)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError
from ..formats import DEFAULT_EMBEDDING_COLUMN, DEFAULT_ID_COLUMN, _parquet_to_numpy
from .ray_transform import _check_shard, _input_error_in, list_shards, ray_session

_ENCODERS: dict[str, object] = {}  # per worker process: weights ref -> NumpyAdaptor, built once


def _encode_batch(batch, *, weights_ref, dim: int, input_dim: int, rescore_with: str, column: str, id_column: str):
    """Ray Data ``map_batches`` function: one batch (pyarrow) -> ids, prefix and full rows."""
    import pyarrow as pa
    import ray

    from ..index.funnel import _fixed_list, encode_rows
    from ..inference import NumpyAdaptor
    from ..validation import check_embeddings

    np_adaptor = None
    if weights_ref is not None:
        key = weights_ref.hex()
        if key not in _ENCODERS:
            _ENCODERS[key] = NumpyAdaptor(ray.get(weights_ref), n_threads=1)  # the tasks are the parallelism
        np_adaptor = _ENCODERS[key]
    x = check_embeddings(_parquet_to_numpy(batch.column(column)), name="vectors", expected_dim=input_dim)
    prefix, full = encode_rows(np_adaptor, x, dim, rescore_with=rescore_with)
    return pa.table({"id": batch.column(id_column).cast(pa.string()), "prefix": _fixed_list(prefix, pa.float32()),
                     "full": _fixed_list(full, pa.float32())})


def add_parquet_shards_to_index(
    path: str | Path,
    source: str | Path,
    *,
    adaptor=None,
    table: str = "funnel",
    column: str | None = None,
    id_column: str | None = None,
    num_workers: int = 2,
    batch_rows: int = 8192,
    ray_address: str | None = None,
    progress: bool = False,
):
    """Add every row of the Parquet shards ``source`` to the funnel table at ``path``, encoded on Ray.

    Parameters
    ----------
    path : LanceDB folder holding a funnel table (``index build`` or ``FunnelIndex.create``).
    source : a folder of ``.parquet`` shards, a glob or one file; each shard needs the embedding
        column and an id column.
    adaptor : the adaptor (object or folder) the table was built with; None for a table built without one.
    table : the table's name.
    column, id_column : embedding and id columns (default ``embedding`` and ``id``).
    num_workers : encoding tasks at once (one CPU each).
    batch_rows : rows per encoding task and per commit.
    ray_address : an existing cluster (``ray://head:10001``, ``auto``); default: the Ray instance this
        process is connected to, else a local one with ``num_workers`` CPUs, stopped at the end.
    progress : show Ray Data's progress bars.

    Returns
    -------
    AddResult : rows added, rows skipped (ids already present), the table's version.
    """
    from ..index.funnel import FunnelIndex

    index = FunnelIndex.open(path, adaptor=adaptor, table=table)  # checks the table and the adaptor first
    if num_workers < 1:
        raise InputError(f"num_workers must be at least 1; got {num_workers}.")
    if batch_rows < 1:
        raise InputError(f"batch_rows must be at least 1; got {batch_rows}.")
    column, idc = column or DEFAULT_EMBEDDING_COLUMN, id_column or DEFAULT_ID_COLUMN
    shards = list_shards(source)
    import pyarrow.parquet as pq

    for p in shards:
        _check_shard(p, column, index.input_dim)
        if idc not in pq.ParquetFile(p).schema_arrow.names:
            raise InputError(f"{p} has no id column {idc!r}; the index needs one id per row (pass --id-column NAME).")
    with ray_session(ray_address, num_workers, progress) as ray:  # rows are committed in input order
        weights = None if index.adaptor is None else ray.put(index.adaptor.weights_)
        ds = ray.data.read_parquet([str(p.resolve()) for p in shards]).select_columns([column, idc])
        ds = ds.map_batches(_encode_batch, batch_size=batch_rows, batch_format="pyarrow", num_cpus=1,
                            compute=ray.data.TaskPoolStrategy(size=num_workers),
                            fn_kwargs=dict(weights_ref=weights, dim=index.dim, input_dim=index.input_dim,
                                           rescore_with=index.meta["rescore_with"], column=column, id_column=idc))
        batches = ((b.column("id").to_pylist(), _parquet_to_numpy(b.column("prefix")),
                    _parquet_to_numpy(b.column("full")))
                   for b in ds.iter_batches(batch_size=batch_rows, batch_format="pyarrow"))
        try:
            return index.add_encoded(batches)
        except BaseException as exc:
            cause = _input_error_in(exc)
            if cause is not None:
                raise cause from None
            raise


__all__: Sequence[str] = ("add_parquet_shards_to_index",)
