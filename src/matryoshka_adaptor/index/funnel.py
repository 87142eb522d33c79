"""A funnel index in LanceDB: search a short quantised prefix, rescore the shortlist with full vectors.

One LanceDB table (embedded, files on local disk, no server) with the columns

* ``id`` (string), ``row`` (int64, insertion order: the deterministic tie-break),
* ``prefix``: the adaptor's first ``dim`` dims, unit length, stored as float32, int8 codes or
  packed sign bits (see :mod:`matryoshka_adaptor.quantization`),
* ``full``: the full float32 vector used for rescoring (the normalised original, or the
  adaptor's full-dim adapted vector),
* optional payload columns (e.g. the document text).

The table's schema metadata records what built it: the format, prefix dim, precision, int8
calibration ranges, the full vector's kind and the adaptor's fingerprint (SHA-256 of its
weights); opening it with another adaptor, or opening a table something else wrote, fails with
:class:`~matryoshka_adaptor.errors.FunnelIndexError` before anything is read or written.

Every ``add`` batch is one LanceDB commit (a new table version): an interrupted ``add`` leaves
the table at its last committed batch, and running it again skips the ids already present.

First stage: LanceDB's exhaustive (exact) vector search for float32 (``dot``) and binary
(``hamming``); LanceDB's Python API has no int8 query vectors (0.40: "Column has element type
Int8 and the query vector is Float32"), so an int8 prefix is scanned in record batches and scored
in numpy, exactly as :class:`~matryoshka_adaptor.quantization.QuantizedVectors` scores it. The
order is score descending, then ``row`` ascending, as in the numpy funnel; ties at the shortlist
boundary are resolved by fetching past it until the whole tie group is in.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FunnelIndexError, InputError
from ..quantization import (
    QuantizedVectors, _rank_rows, binary_codes, bytes_per_vector, check_precision, fit_binary_transform,
    quantize_int8, rescore, topk_deterministic,
)
from ..quantization import int8_ranges as calibrate_int8

PRECISIONS = ("float32", "int8", "binary", "binary-centered", "binary-itq")
_PA_TYPE = {"float32": "float32", "int8": "int8", "binary": "uint8", "binary-centered": "uint8", "binary-itq": "uint8"}


def _array_to_meta(a: np.ndarray | None) -> dict | None:
    """A float32 array as JSON-safe metadata (little-endian bytes, base64): no pickle."""
    if a is None:
        return None
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"shape": list(a.shape), "float32_le_base64": base64.b64encode(a.tobytes()).decode()}


def _array_from_meta(m: dict | None) -> np.ndarray | None:
    if m is None:
        return None
    return np.frombuffer(base64.b64decode(m["float32_le_base64"]), dtype="<f4").reshape(m["shape"]).astype(np.float32)
from ..validation import check_embeddings, l2_normalize

FORMAT = "matryoshka-adaptor-funnel"
FORMAT_VERSION = 2  # 2: binary-centered / binary-itq tables (others are still written as 1, readable by older versions)
META_KEY = b"matryoshka_adaptor.funnel"
DEFAULT_TABLE = "funnel"
RESCORE_WITH = ("original", "adapted")
RESERVED_COLUMNS = ("id", "row", "prefix", "full")


def _lancedb():
    try:
        import lancedb
    except ImportError as exc:
        raise ImportError("the funnel index needs LanceDB; `pip install 'matryoshka-adaptor[index]'`.") from exc
    return lancedb


def adaptor_fingerprint(adaptor) -> str:
    """SHA-256 over the adaptor's weights (names, dtypes, shapes, bytes); ``"none"`` without one."""
    if adaptor is None:
        return "none"
    h = hashlib.sha256()
    for name in sorted(adaptor.weights_):
        w = np.ascontiguousarray(adaptor.weights_[name])
        h.update(f"{name}:{w.dtype.str}:{w.shape}".encode())
        h.update(w.tobytes())
    return h.hexdigest()


def _load_adaptor(adaptor):
    if adaptor is None or hasattr(adaptor, "weights_"):
        return adaptor
    from ..estimator import MatryoshkaAdaptor

    return MatryoshkaAdaptor.load(adaptor)


@dataclass
class SearchResult:
    """Per query: ``ids`` (strings), ``rows`` (table rows) and ``scores``, best first."""

    ids: list[list[str]]
    rows: np.ndarray
    scores: np.ndarray


@dataclass
class AddResult:
    added: int
    skipped: int
    version: int


def _fixed_list(values: np.ndarray, pa_type):
    import pyarrow as pa

    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values).reshape(-1), type=pa_type),
                                             values.shape[1])


def _list_to_numpy(column, dtype, width: int) -> np.ndarray:
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=dtype).reshape(-1, width)


class FunnelIndex:
    """A LanceDB table searched in two stages: quantised adaptor prefix, then full-vector rescoring.

    Create with :meth:`create`, open with :meth:`open`; then :meth:`add` and :meth:`search`.

    Examples
    --------
    >>> index = FunnelIndex.create("db/", adaptor="my-adaptor/", dim=128, precision="binary",
    ...                            calibration=corpus)                          # doctest: +SKIP
    >>> index.add(corpus, ids=corpus_ids)                                       # doctest: +SKIP
    >>> hits = index.search(["what causes migraines?"], k=10, shortlist=100,
    ...                     source=make_source("sentence-transformers", "all-MiniLM-L6-v2"))  # doctest: +SKIP
    """

    def __init__(self, table, meta: dict, adaptor=None):
        self.table = table
        self.meta = meta
        self.adaptor = adaptor
        self.dim = int(meta["dim"])
        self.precision = meta["precision"]
        self.input_dim = meta.get("input_dim")
        self.full_dim = int(meta["full_dim"])
        self.ranges = None if meta.get("int8_ranges") is None else np.asarray(meta["int8_ranges"], np.float32)
        # binary-centered / binary-itq: the transform before the sign bits, fitted at create time
        self.binary_mean = _array_from_meta(meta.get("binary_mean"))
        self.binary_rotation = _array_from_meta(meta.get("binary_rotation"))
        self._np = None if adaptor is None else adaptor.numpy_adaptor()

    # ---------------------------------------------------------------- create / open
    @classmethod
    def create(cls, path: str | Path, *, adaptor=None, dim: int, precision: str = "binary",
               rescore_with: str = "original", calibration: np.ndarray | None = None, input_dim: int | None = None,
               table: str = DEFAULT_TABLE, embedding_model: str | None = None, payload: dict | None = None,
               int8_ranges: np.ndarray | None = None, binary_transform: tuple | None = None, seed: int = 0,
               _precomputed: bool = False) -> FunnelIndex:
        """Create an empty funnel table at LanceDB folder ``path`` (refuses an existing table).

        Parameters
        ----------
        adaptor : MatryoshkaAdaptor, adaptor folder, or None
            None stores the plain first ``dim`` dims of the (normalised) input vectors.
        dim : int
            Prefix dims searched in the first stage.
        precision : {"float32", "int8", "binary", "binary-centered", "binary-itq"}
            Prefix storage (see :mod:`matryoshka_adaptor.quantization`); the binary ones take
            ``ceil(dim / 8)`` bytes per row.
        rescore_with : {"original", "adapted"}
            The ``full`` column: the normalised input vector, or the adaptor's full-dim output.
        calibration : (n, input_dim) array, needed for int8, binary-centered and binary-itq
            Input vectors (e.g. the corpus or a sample) whose adapted prefixes set the int8 ranges,
            or the mean (and ITQ rotation) before the sign bits; stored in the table's metadata.
        int8_ranges : (2, dim) array, optional
            Per-dimension [min; max] of the prefixes, instead of ``calibration``.
        binary_transform : (mean, rotation), optional
            For binary-centered / binary-itq, instead of ``calibration``
            (see :func:`~matryoshka_adaptor.quantization.fit_binary_transform`).
        seed : int
            Seeds the ITQ rotation's fit.
        input_dim : int, needed without an adaptor
        embedding_model : str, optional
            The sentence-transformers model that makes the input vectors; lets ``search`` take texts.
        payload : dict of column name -> pyarrow type, optional
            Extra columns stored with each row.
        """
        import pyarrow as pa

        check_precision(precision)
        adaptor = _load_adaptor(adaptor)
        if rescore_with not in RESCORE_WITH:
            raise InputError(f"rescore_with must be one of {', '.join(RESCORE_WITH)}; got {rescore_with!r}.")
        if adaptor is None and rescore_with == "adapted":
            raise InputError("rescore_with='adapted' needs an adaptor; pass one or use 'original'.")
        d = adaptor.input_dim_ if adaptor is not None else input_dim
        if d is None:
            raise InputError("without an adaptor give input_dim (the dimension of the vectors to index).")
        if not 1 <= int(dim) <= d:
            raise InputError(f"dim must be between 1 and the input dimension {d}; got {dim}.")
        payload = dict(payload or {})
        clash = sorted(set(payload) & set(RESERVED_COLUMNS))
        if clash:
            raise InputError(f"payload column(s) {clash} clash with the index's own columns {RESERVED_COLUMNS}.")
        meta = {"format": FORMAT, "format_version": 2 if precision in ("binary-centered", "binary-itq") else 1, "dim": int(dim), "precision": precision,
                "input_dim": int(d), "full_dim": int(d), "rescore_with": rescore_with,
                "adaptor_fingerprint": "precomputed" if _precomputed else adaptor_fingerprint(adaptor),
                "embedding_model": embedding_model,
                "base_model": getattr(adaptor, "base_model", None), "int8_ranges": None,
                "payload_columns": sorted(payload)}
        index = cls(None, meta, adaptor)
        if precision == "int8" and int8_ranges is not None:
            index.ranges = np.asarray(int8_ranges, dtype=np.float32)
            meta["int8_ranges"] = index.ranges.tolist()
        elif precision == "int8":
            if calibration is None:
                raise InputError("int8 needs calibration vectors (e.g. the corpus or a sample of it) to set its "
                                 "per-dimension ranges; pass calibration=...")
            prefixes = [index._encode(np.asarray(calibration[s:s + 8192]), s)[0]
                        for s in range(0, len(calibration), 8192)]
            index.ranges = calibrate_int8(np.concatenate(prefixes))
            meta["int8_ranges"] = index.ranges.tolist()
        elif precision in ("binary-centered", "binary-itq"):
            if binary_transform is None:
                if calibration is None:
                    raise InputError(f"{precision} needs calibration vectors (e.g. the corpus or a sample of it) "
                                     "to fit its mean and rotation; pass calibration=...")
                prefixes = [index._encode(np.asarray(calibration[s:s + 8192]), s)[0]
                            for s in range(0, len(calibration), 8192)]
                binary_transform = fit_binary_transform(np.concatenate(prefixes), precision, seed=seed)
            index.binary_mean, index.binary_rotation = binary_transform
            meta["binary_mean"] = _array_to_meta(index.binary_mean)
            meta["binary_rotation"] = _array_to_meta(index.binary_rotation)
        prefix_type = getattr(pa, _PA_TYPE[precision])()
        schema = pa.schema(
            [pa.field("id", pa.string(), nullable=False), pa.field("row", pa.int64(), nullable=False),
             pa.field("prefix", pa.list_(prefix_type, bytes_per_vector(dim, precision) if precision != "float32"
                                         else int(dim))),
             pa.field("full", pa.list_(pa.float32(), int(d)))]
            + [pa.field(name, t) for name, t in sorted(payload.items())],
            metadata={META_KEY: json.dumps(meta).encode()})
        db = _lancedb().connect(str(path))
        if table in _table_names(db):
            raise FunnelIndexError(f"{path} already has a table {table!r}; add to it with `index add`, or choose "
                                   "another --table name.")
        index.table = db.create_table(table, schema=schema)
        return index

    @classmethod
    def open(cls, path: str | Path, *, adaptor=None, table: str = DEFAULT_TABLE) -> FunnelIndex:
        """Open an existing funnel table; ``adaptor`` must be the one it was built with (checked by fingerprint)."""
        tbl, meta = _open_table(path, table)
        adaptor = _load_adaptor(adaptor)
        recorded, given = meta["adaptor_fingerprint"], adaptor_fingerprint(adaptor)
        if recorded != given:
            if recorded == "precomputed":
                raise FunnelIndexError(f"table {table!r} in {path} holds prefixes computed outside the index "
                                       "(FunnelIndex.from_encoded); search it with search_encoded.")
            if recorded == "none":
                hint = "it was built without an adaptor; open it without one"
            elif given == "none":
                hint = "it was built with an adaptor; pass the same adaptor folder (--adaptor)"
            else:
                hint = "pass the adaptor folder it was built with, or build a new table for this adaptor"
            raise FunnelIndexError(f"table {table!r} in {path} was built with adaptor {recorded[:12]}, not "
                                   f"{given[:12]}: {hint}.")
        return cls(tbl, meta, adaptor)

    @classmethod
    def from_encoded(cls, path: str | Path, prefix: np.ndarray, full: np.ndarray, ids: list[str], *,
                     precision: str = "binary", table: str = DEFAULT_TABLE, batch_rows: int = 65536,
                     seed: int = 0) -> FunnelIndex:
        """A table from prefixes made elsewhere (PCA, truncation, an adaptor's own output).

        Such a table has no encoder: search it with :meth:`search_encoded`. The benchmark's
        ``--store lancedb`` uses this to run every method's funnel through LanceDB. int8 ranges
        are calibrated on ``prefix``.
        """
        prefix = np.asarray(prefix, dtype=np.float32)
        index = cls.create(path, dim=prefix.shape[1], precision=precision, input_dim=full.shape[1], table=table,
                           int8_ranges=calibrate_int8(prefix) if precision == "int8" else None, _precomputed=True,
                           binary_transform=fit_binary_transform(prefix, precision, seed=seed))
        for s in range(0, len(prefix), batch_rows):
            index._append(list(ids[s:s + batch_rows]), prefix[s:s + batch_rows], np.asarray(full[s:s + batch_rows]),
                          None, s)
        return index

    # ---------------------------------------------------------------- encoding
    def _encode(self, x: np.ndarray, offset: int = 0, *, name: str = "vectors") -> tuple[np.ndarray, np.ndarray]:
        """Input vectors -> (prefix, full): unit-length float32 arrays."""
        x = check_embeddings(x, name=name, expected_dim=self.input_dim)
        return encode_rows(self._np, x, self.dim, rescore_with=self.meta["rescore_with"], offset=offset, name=name)

    def _codes(self, prefix: np.ndarray) -> np.ndarray:
        if self.precision == "float32":
            return prefix
        if self.precision == "int8":
            return quantize_int8(prefix, self.ranges)
        return binary_codes(prefix, self.binary_mean, self.binary_rotation)

    # ---------------------------------------------------------------- writing
    def existing_ids(self) -> set[str]:
        if self.table.count_rows() == 0:
            return set()
        col = self.table.search().select(["id"]).limit(None).to_arrow().column("id")
        return set(col.to_pylist())

    def _append(self, ids: list[str], prefix: np.ndarray, full: np.ndarray, payload: dict | None, first_row: int):
        """One LanceDB commit with these rows (already encoded)."""
        import pyarrow as pa

        codes = self._codes(prefix)
        pa_type = getattr(pa, _PA_TYPE[self.precision])()
        cols = {"id": pa.array(ids, pa.string()), "row": pa.array(np.arange(first_row, first_row + len(ids)),
                                                                   pa.int64()),
                "prefix": _fixed_list(codes, pa_type), "full": _fixed_list(full.astype(np.float32), pa.float32())}
        schema = self.table.schema
        for name in self.meta.get("payload_columns", []):
            values = (payload or {}).get(name)
            cols[name] = pa.array(values if values is not None else [None] * len(ids), schema.field(name).type)
        self.table.add(pa.table(cols, schema=schema))

    def add(self, batches: Iterable[tuple], *, total: int | None = None, progress: bool = False) -> AddResult:
        """Add rows from an iterable of ``(ids, vectors[, payload dict])`` batches; one commit per batch.

        Ids already in the table (from an earlier, perhaps interrupted, run or an earlier batch) are
        skipped; an id twice within one batch is an error. Vectors go through the adaptor batch by batch (bounded memory).
        Use :func:`iter_vector_file`, :func:`iter_arrays` or :func:`iter_texts` to make batches.
        """

        def rows(batch, keep, offset):
            x = check_embeddings(batch[1], name="vectors", expected_dim=self.input_dim)
            return self._encode(np.asarray(x)[keep], offset)

        return self._add_batches(batches, rows, payload_at=2, total=total, progress=progress)

    def add_encoded(self, batches: Iterable[tuple], *, total: int | None = None, progress: bool = False) -> AddResult:
        """Like :meth:`add`, for ``(ids, prefix, full[, payload dict])`` batches already encoded with this
        table's adaptor (:func:`encode_rows`, e.g. on Ray workers: ``matryoshka_adaptor.distributed``)."""
        width = (self.dim, self.full_dim)

        def rows(batch, keep, offset):
            prefix, full = (np.asarray(a, dtype=np.float32)[keep] for a in batch[1:3])
            if prefix.shape[1:] != width[:1] or full.shape[1:] != width[1:]:
                raise InputError(f"encoded rows have prefix/full widths {prefix.shape[1:]}/{full.shape[1:]}, but "
                                 f"the table stores {width[0]}/{width[1]}; encode with the table's adaptor and dim.")
            return prefix, full

        return self._add_batches(batches, rows, payload_at=3, total=total, progress=progress)

    def _add_batches(self, batches, rows, *, payload_at: int, total, progress) -> AddResult:
        """The one add loop: skip ids already present, refuse an id twice, one commit per batch."""
        from tqdm.auto import tqdm

        present = self.existing_ids()
        next_row = self.table.count_rows()
        added = skipped = 0
        offset = 0
        bar = tqdm(total=total, desc="index add", unit="vec", disable=not progress)
        for batch in batches:
            ids = [str(i) for i in batch[0]]
            payload = batch[payload_at] if len(batch) > payload_at else None
            if len(ids) != len(batch[1]):
                raise InputError(f"a batch has {len(ids)} ids for {len(batch[1])} vectors; give one id per vector.")
            keep = [i for i, id_ in enumerate(ids) if id_ not in present]
            skipped += len(ids) - len(keep)
            new_ids = [ids[i] for i in keep]
            if len(set(new_ids)) != len(new_ids):
                dup = next(i for i in new_ids if new_ids.count(i) > 1)
                raise InputError(f"id {dup!r} appears twice in the input; ids must be unique.")
            if keep:
                prefix, full = rows(batch, keep, offset)
                sub = None if payload is None else {k: [v[i] for i in keep] for k, v in payload.items()}
                self._append(new_ids, prefix, full, sub, next_row)
                present.update(new_ids)
                next_row += len(keep)
                added += len(keep)
            offset += len(ids)
            bar.update(len(ids))
        bar.close()
        return AddResult(added, skipped, self.table.version)

    # ---------------------------------------------------------------- searching
    def encode_queries(self, queries, source=None) -> tuple[np.ndarray, np.ndarray]:
        """Query vectors or texts (through ``source``, an embedding source) -> (prefix, full)."""
        if isinstance(queries, str):
            queries = [queries]
        if isinstance(queries, (list, tuple)) and queries and isinstance(queries[0], str):
            if source is None:
                model = self.meta.get("embedding_model")
                if not model:
                    raise InputError("text queries need an embedding source (or a table built with "
                                     "embedding_model=...); pass source=make_source(...).")
                from ..embed.sources import make_source

                source = make_source("sentence-transformers", model)
            queries = source.encode(list(queries), progress=False)
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q.reshape(1, -1)
        return self._encode(q, name="queries")

    def search(self, queries, k: int = 10, shortlist: int = 100, *, source=None) -> SearchResult:
        """Top-k rows per query: ``shortlist`` candidates from the prefix, rescored with full vectors.

        ``queries`` are raw vectors (as given to :meth:`add`) or texts (encoded by ``source``, or by the
        table's recorded sentence-transformers model). ``shortlist=0`` returns the first stage alone.
        """
        qp, qf = self.encode_queries(queries, source)
        return self.search_encoded(qp, qf, k, shortlist)

    def search_encoded(self, query_prefix: np.ndarray, query_full: np.ndarray | None, k: int, shortlist: int,
                       *, query_block: int = 256) -> SearchResult:
        """The funnel on already-encoded queries (prefix and full vectors, unit length)."""
        if k < 1 or shortlist < 0:
            raise InputError(f"k must be >= 1 and shortlist >= 0 (0: no rescoring); got k={k}, shortlist={shortlist}.")
        if query_prefix.shape[1] != self.dim:
            raise InputError(f"query prefixes have {query_prefix.shape[1]} dims; this table's prefix has {self.dim}.")
        rows_out, scores_out = [], []
        for s in range(0, len(query_prefix), query_block):
            qp = query_prefix[s:s + query_block]
            rows, scores = self._first_stage(qp, shortlist or k)
            if shortlist:
                qf = query_full[s:s + query_block]
                uniq = np.unique(rows[rows >= 0])
                vecs = self._fetch_full(uniq)
                pos = np.searchsorted(uniq, np.where(rows >= 0, rows, uniq[0]))
                # monotone row -> position map: rescore's tie-break by position is a tie-break by row
                pos_k, scores = rescore(qf, vecs, pos, k)
                rows = uniq[pos_k]
            rows_out.append(rows)
            scores_out.append(scores)
        rows = np.concatenate(rows_out)
        ids = self._ids_of(rows)
        return SearchResult(ids, rows, np.concatenate(scores_out))

    def _first_stage(self, qp: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        n = min(n, self.table.count_rows())
        if n == 0:
            raise InputError("the index is empty; add vectors first.")
        if self.precision == "int8":
            return self._scan_int8(qp, n)
        metric, q = (("dot", qp.astype(np.float32)) if self.precision == "float32"
                     else ("hamming", binary_codes(qp, self.binary_mean, self.binary_rotation)))
        limit = n + max(16, n // 4)
        todo = np.arange(len(q))
        rows = np.empty((len(q), n), np.int64)
        scores = np.empty((len(q), n), np.float64)
        while len(todo):
            res = (self.table.search(q[todo], vector_column_name="prefix").distance_type(metric)
                   .limit(limit).select(["row", "_distance"]).to_arrow())
            qi = res.column("query_index").to_numpy() if "query_index" in res.column_names else np.zeros(res.num_rows, int)
            r_all, d_all = res.column("row").to_numpy(), res.column("_distance").to_numpy().astype(np.float64)
            again = []
            for j, qidx in enumerate(todo):
                sel = qi == j
                r = r_all[sel]
                sc = 1.0 - d_all[sel] if metric == "dot" else -d_all[sel]  # LanceDB: dot distance = 1 - dot
                # the whole tie group at place n must be in: fetch further while the last fetched ties it
                if len(r) == limit and len(r) > n and np.sort(sc)[::-1][n - 1] == sc.min():
                    again.append(qidx)
                    continue
                ri, si = _rank_rows(r[None, :], sc[None, :], n)
                rows[qidx], scores[qidx] = ri[0], si[0]
            todo = np.array(again, dtype=int)
            limit *= 2
        return rows, scores

    def _scan_int8(self, qp: np.ndarray, n: int, batch_rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
        best_r = best_s = None
        reader = self.table.search().select(["row", "prefix"]).limit(None).to_batches(batch_rows)
        for batch in reader:
            r = batch.column("row").to_numpy()
            order = np.argsort(r, kind="stable")
            codes = _list_to_numpy(batch.column("prefix"), np.int8, self.dim)[order]
            store = QuantizedVectors("int8", self.dim, codes, self.ranges)
            idx, sc = topk_deterministic(store.scores(qp).astype(np.float64), n)
            rr = r[order][idx]
            if best_r is None:
                best_r, best_s = rr, sc
            else:
                best_r, best_s = _rank_rows(np.concatenate([best_r, rr], 1), np.concatenate([best_s, sc], 1), n)
        return best_r, best_s

    def _fetch_full(self, rows: np.ndarray) -> np.ndarray:
        """Full vectors of the given (sorted, unique) rows, in that order."""
        tbl = self.table.take_offsets(rows.tolist()).select(["row", "full"]).to_arrow()
        got = tbl.column("row").to_numpy()
        if len(got) != len(rows) or not np.array_equal(np.sort(got), rows):
            # rows are table offsets while the table is append-only; otherwise look them up by value
            tbl = self.table.search().where(f"row IN ({','.join(map(str, rows.tolist()))})").select(
                ["row", "full"]).limit(None).to_arrow()
            got = tbl.column("row").to_numpy()
        vecs = _list_to_numpy(tbl.column("full"), np.float32, self.full_dim)
        return vecs[np.argsort(got)]

    def _ids_of(self, rows: np.ndarray) -> list[list[str]]:
        uniq = np.unique(rows)
        tbl = self.table.take_offsets(uniq.tolist()).select(["row", "id"]).to_arrow()
        id_of = dict(zip(tbl.column("row").to_pylist(), tbl.column("id").to_pylist()))
        missing = [r for r in uniq.tolist() if r not in id_of]
        if missing:
            tbl = self.table.search().where(f"row IN ({','.join(map(str, missing))})").select(
                ["row", "id"]).limit(None).to_arrow()
            id_of.update(zip(tbl.column("row").to_pylist(), tbl.column("id").to_pylist()))
        return [[id_of[r] for r in row] for row in rows.tolist()]

    # ---------------------------------------------------------------- information
    def info(self) -> dict:
        meta = {k: v for k, v in self.meta.items() if k != "int8_ranges"}
        return {**meta, "rows": self.table.count_rows(), "version": self.table.version,
                "prefix_bytes_per_vector": bytes_per_vector(self.dim, self.precision),
                "full_bytes_per_vector": 4 * self.full_dim, "uri": str(self.table.uri)}


def encode_rows(np_adaptor, x: np.ndarray, dim: int, *, rescore_with: str = "original", offset: int = 0,
                name: str = "vectors") -> tuple[np.ndarray, np.ndarray]:
    """Checked input vectors -> a funnel table's (prefix, full) rows, unit-length float32.

    ``np_adaptor`` is the table's adaptor as a :class:`~matryoshka_adaptor.inference.NumpyAdaptor`
    (None: the plain first ``dim`` dims); ``full`` is the normalised input, or the adaptor's full-dim
    output when ``rescore_with="adapted"``. Numpy only, so it also runs on Ray workers.
    """
    if np_adaptor is None:
        full = l2_normalize(x, name=name, offset=offset)
        prefix = full[:, :dim]
        prefix = prefix / np.maximum(np.linalg.norm(prefix, axis=1, keepdims=True), 1e-12)
        return prefix.astype(np.float32), full
    prefix = np_adaptor.apply(x, dim, offset=offset)
    if rescore_with == "adapted":
        full = prefix if dim == x.shape[1] else np_adaptor.apply(x, x.shape[1], offset=offset)
    else:
        full = l2_normalize(x, name=name, offset=offset)
    return prefix, full


def _open_table(path, table: str):
    """The LanceDB table and its funnel metadata; refuses tables something else wrote."""
    db = _lancedb().connect(str(path))
    if table not in _table_names(db):
        raise FunnelIndexError(f"{path} has no table {table!r}; create one with `index build`.")
    tbl = db.open_table(table)
    raw = (tbl.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise FunnelIndexError(f"table {table!r} in {path} was not written by `matryoshka-adaptor index build` "
                               "(no funnel metadata); build a funnel index with `index build`.")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT or int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise FunnelIndexError(f"table {table!r} in {path} has format {meta.get('format')!r} version "
                               f"{meta.get('format_version')}; this library reads {FORMAT} up to version "
                               f"{FORMAT_VERSION} (upgrade matryoshka-adaptor).")
    return tbl, meta


def read_info(path: str | Path, table: str = DEFAULT_TABLE) -> dict:
    """What a funnel table holds, without needing its adaptor."""
    tbl, meta = _open_table(path, table)
    return FunnelIndex(tbl, meta).info()


def _table_names(db) -> list[str]:
    if hasattr(db, "list_tables"):
        res = db.list_tables()
        return list(getattr(res, "tables", res))
    return list(db.table_names())


# -------------------------------------------------------------------- batch sources
def iter_arrays(vectors: np.ndarray, ids: list[str] | None = None, *, batch_rows: int = 4096,
                payload: dict[str, list] | None = None) -> Iterator[tuple]:
    """Batches from an in-memory (or memory-mapped) array; ids default to row numbers."""
    n = len(vectors)
    if ids is not None and len(ids) != n:
        raise InputError(f"{len(ids)} ids for {n} vectors; give one id per vector.")
    for s in range(0, n, batch_rows):
        e = min(s + batch_rows, n)
        b_ids = [str(i) for i in (ids[s:e] if ids is not None else range(s, e))]
        b_pay = None if payload is None else {k: list(v[s:e]) for k, v in payload.items()}
        yield b_ids, np.asarray(vectors[s:e]), b_pay


def iter_vector_file(path: str | Path, *, ids: list[str] | None = None, column: str | None = None,
                     id_column: str | None = None, payload_columns: tuple[str, ...] = (),
                     batch_rows: int = 4096) -> tuple[int, Iterator[tuple]]:
    """(row count, batches) from ``.npy`` (memory-mapped) or Parquet (record batches, other columns as payload)."""
    from ..formats import DEFAULT_EMBEDDING_COLUMN, DEFAULT_ID_COLUMN, _parquet_to_numpy, file_kind, read_embeddings

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file.")
    kind = file_kind(path)
    if kind != "parquet":
        x, file_ids = read_embeddings(path, column=column, id_column=id_column)
        return len(x), iter_arrays(x, ids or file_ids, batch_rows=batch_rows)
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    col, idc = column or DEFAULT_EMBEDDING_COLUMN, id_column or DEFAULT_ID_COLUMN
    names = pf.schema_arrow.names
    missing = [c for c in (col, *payload_columns) if c not in names]
    if missing:
        raise InputError(f"{path} has no column(s) {missing} (columns: {names}).")

    def batches():
        offset = 0
        cols = [col] + ([idc] if idc in names else []) + list(payload_columns)
        for rb in pf.iter_batches(batch_size=batch_rows, columns=cols):
            x = _parquet_to_numpy(rb.column(col))
            b_ids = ([str(v) for v in rb.column(idc).to_pylist()] if idc in names
                     else [str(i) for i in range(offset, offset + len(x))])
            yield b_ids, x, {c: rb.column(c).to_pylist() for c in payload_columns} or None
            offset += len(x)

    return pf.metadata.num_rows, batches()


def iter_texts(ids: list[str], texts: list[str], source, *, batch_rows: int = 1024,
               text_column: str | None = None) -> Iterator[tuple]:
    """Batches embedded on the fly by ``source`` (its cache makes a rerun cheap)."""
    for s in range(0, len(texts), batch_rows):
        chunk = texts[s:s + batch_rows]
        vecs = source.encode(chunk, progress=False)
        yield ids[s:s + batch_rows], vecs, ({text_column: chunk} if text_column else None)


__all__ = ["FunnelIndex", "SearchResult", "AddResult", "adaptor_fingerprint", "iter_arrays", "iter_vector_file",
           "iter_texts", "PRECISIONS"]
