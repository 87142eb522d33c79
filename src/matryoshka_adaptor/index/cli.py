"""``matryoshka-adaptor index build | add | search | info``: the LanceDB funnel index from the shell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError

app = typer.Typer(help="Funnel index in LanceDB: quantised adaptor prefix first, full vectors to rescore.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _ids_file(path: Optional[Path], key: str) -> Optional[list[str]]:
    if path is None:
        return None
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        data = data.get(key) or data.get("ids")
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of ids or an object with {key!r} (or 'ids').")
    return [str(i) for i in data]


def _batches(vectors: Optional[Path], texts: Optional[Path], ids: Optional[Path], column: Optional[str],
             payload: Optional[str], store_text: bool, model: Optional[str], batch_rows: int, index):
    from .funnel import iter_texts, iter_vector_file

    if (vectors is None) == (texts is None):
        raise InputError("give exactly one of --vectors FILE (.npy/.parquet) or --texts FILE (.jsonl/.txt).")
    if vectors is not None:
        n, it = iter_vector_file(vectors, ids=_ids_file(ids, "corpus_ids"), column=column,
                                 payload_columns=tuple(p for p in (payload or "").split(",") if p),
                                 batch_rows=batch_rows)
        return n, it
    from ..embed.sources import default_cache_path, make_source
    from ..embed.texts import read_texts

    model = model or index.meta.get("embedding_model")
    if not model:
        raise InputError("--texts needs --model (a sentence-transformers name or folder) or a table built with one.")
    t_ids, t_texts = read_texts(texts)
    source = make_source("sentence-transformers", model, cache_path=default_cache_path())
    return len(t_texts), iter_texts(t_ids, t_texts, source, batch_rows=batch_rows,
                                    text_column="text" if store_text else None)


@app.command()
def build(
    path: Path = typer.Argument(..., help="LanceDB folder (created if missing)."),
    vectors: Optional[Path] = typer.Option(None, help="Input vectors: .npy (memory-mapped) or Parquet (embedding + id columns)."),
    texts: Optional[Path] = typer.Option(None, help="Or texts to embed with --model: BEIR .jsonl (_id, title, text) or .txt."),
    adaptor: Optional[Path] = typer.Option(None, help="Adaptor folder (without one the prefix is plain truncation)."),
    dim: int = typer.Option(128, help="Prefix dims for the first stage."),
    precision: str = typer.Option("binary", help="Prefix storage: float32, int8, binary, binary-centered or binary-itq."),
    rescore_with: str = typer.Option("original", help="Full vectors to rescore with: original or adapted."),
    ids: Optional[Path] = typer.Option(None, help="ids.json (a list, or corpus_ids) in row order for .npy input."),
    column: Optional[str] = typer.Option(None, help="Parquet embedding column (default: embedding)."),
    payload: Optional[str] = typer.Option(None, help="Parquet columns to store alongside, comma-separated."),
    store_text: bool = typer.Option(False, help="With --texts: keep each text in a `text` column."),
    model: Optional[str] = typer.Option(None, help="sentence-transformers model that made the vectors; lets `search --query` take text."),
    table: str = typer.Option("funnel", help="Table name inside the LanceDB folder."),
    calibration_rows: int = typer.Option(100_000, help="int8, binary-centered, binary-itq: input rows (evenly spaced) that set the per-dim ranges / the mean and rotation."),
    batch_rows: int = typer.Option(4096, help="Rows per committed batch (bounds memory)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Create a funnel table and fill it.

    Example: matryoshka-adaptor index build db/ --vectors corpus.npy --ids ids.json --adaptor my-adaptor/
    --dim 128 --precision binary --model sentence-transformers/all-MiniLM-L6-v2
    """
    import pyarrow as pa

    from .funnel import FunnelIndex

    names = [p for p in (payload or "").split(",") if p]
    pay_types = {name: pa.string() for name in names}
    if store_text:
        pay_types["text"] = pa.string()
    calibration = None
    if precision in ("int8", "binary-centered", "binary-itq"):
        calibration = _calibration(vectors, texts, column, model, calibration_rows)
    from ..estimator import MatryoshkaAdaptor

    est = MatryoshkaAdaptor.load(adaptor) if adaptor else None
    input_dim = None if est else _input_dim(vectors, texts, column, model)
    if vectors is not None and names:
        pay_types = _parquet_types(vectors, names) | ({"text": pa.string()} if store_text else {})
    index = FunnelIndex.create(path, adaptor=est, dim=dim, precision=precision, rescore_with=rescore_with,
                               calibration=calibration, input_dim=input_dim, table=table, embedding_model=model,
                               payload=pay_types)
    n, batches = _batches(vectors, texts, ids, column, payload, store_text, model, batch_rows, index)
    res = index.add(batches, total=n, progress=not quiet)
    typer.echo(f"built {path} table {table!r}: {res.added} rows, version {res.version}")


def _input_dim(vectors, texts, column, model) -> int:
    x = _calibration(vectors, texts, column, model, 1)
    return int(x.shape[1])


def _calibration(vectors, texts, column, model, rows: int):
    import numpy as np

    from ..formats import read_embeddings

    if vectors is not None:
        if Path(vectors).suffix == ".parquet":
            import pyarrow.parquet as pq

            from ..formats import DEFAULT_EMBEDDING_COLUMN, _parquet_to_numpy

            pf = pq.ParquetFile(vectors)
            n = pf.metadata.num_rows
            step = max(1, n // rows)
            parts, seen = [], 0
            for rb in pf.iter_batches(batch_size=65536, columns=[column or DEFAULT_EMBEDDING_COLUMN]):
                x = _parquet_to_numpy(rb.column(0))
                take = (np.arange(seen, seen + len(x)) % step) == 0
                parts.append(x[take])
                seen += len(x)
            return np.concatenate(parts)[:rows]
        x, _ = read_embeddings(vectors, column=column)
        return np.asarray(x[:: max(1, len(x) // rows)][:rows])
    if texts is not None and model:
        from ..embed.sources import default_cache_path, make_source
        from ..embed.texts import read_texts

        _, t = read_texts(texts)
        src = make_source("sentence-transformers", model, cache_path=default_cache_path())
        return src.encode(t[:: max(1, len(t) // rows)][:rows], progress=False)
    raise InputError("give --vectors FILE or --texts FILE with --model.")


def _parquet_types(path: Path, names: list[str]) -> dict:
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    missing = [n for n in names if n not in schema.names]
    if missing:
        raise InputError(f"{path} has no column(s) {missing} for --payload (columns: {schema.names}).")
    return {n: schema.field(n).type for n in names}


@app.command()
def add(
    path: Path = typer.Argument(..., help="LanceDB folder with a funnel table."),
    vectors: Optional[Path] = typer.Option(None, help="Input vectors: .npy or Parquet."),
    texts: Optional[Path] = typer.Option(None, help="Or texts to embed with the table's model (--model to override)."),
    adaptor: Optional[Path] = typer.Option(None, help="The adaptor folder the table was built with."),
    ids: Optional[Path] = typer.Option(None, help="ids.json for .npy input."),
    column: Optional[str] = typer.Option(None, help="Parquet embedding column (default: embedding)."),
    payload: Optional[str] = typer.Option(None, help="Parquet payload columns (as at build)."),
    store_text: bool = typer.Option(False, help="With --texts: keep each text in the `text` column."),
    model: Optional[str] = typer.Option(None, help="sentence-transformers model for --texts (default: the table's)."),
    table: str = typer.Option("funnel"),
    batch_rows: int = typer.Option(4096, help="Rows per committed batch."),
    engine: str = typer.Option("local", help="local (this process) or ray: --vectors is then a folder, glob or "
                               "file of Parquet shards, encoded on Ray workers and committed here."),
    id_column: Optional[str] = typer.Option(None, help="--engine ray: the shards' id column (default: id)."),
    ray_address: Optional[str] = typer.Option(None, help="--engine ray: an existing cluster, e.g. ray://head:10001 "
                                              "(default: a local Ray instance)."),
    workers: int = typer.Option(2, help="--engine ray: encoding tasks at once (one CPU each)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Add rows; each batch is one commit, and ids already in the table are skipped (safe to rerun).

    Example: matryoshka-adaptor index add db/ --vectors more.parquet --adaptor my-adaptor/
    Example (Ray): matryoshka-adaptor index add db/ --vectors 'shards/*.parquet' --adaptor my-adaptor/ --engine ray --workers 8
    """
    from .funnel import FunnelIndex

    if engine not in ("local", "ray"):
        raise InputError(f"--engine must be 'local' or 'ray'; got {engine!r}.")
    if engine == "ray":
        if vectors is None or texts is not None or payload or ids is not None:
            raise InputError("--engine ray adds Parquet shards given with --vectors (ids from --id-column); "
                             "--texts, --ids and --payload need --engine local.")
        from ..distributed.ray_index import add_parquet_shards_to_index

        res = add_parquet_shards_to_index(path, str(vectors), adaptor=adaptor, table=table, column=column,
                                          id_column=id_column, num_workers=workers, batch_rows=batch_rows,
                                          ray_address=ray_address, progress=not quiet)
        typer.echo(f"added {res.added} rows ({res.skipped} already present), version {res.version}")
        return
    index = FunnelIndex.open(path, adaptor=adaptor, table=table)
    n, batches = _batches(vectors, texts, ids, column, payload, store_text, model, batch_rows, index)
    res = index.add(batches, total=n, progress=not quiet)
    typer.echo(f"added {res.added} rows ({res.skipped} already present), version {res.version}")


@app.command()
def search(
    path: Path = typer.Argument(..., help="LanceDB folder with a funnel table."),
    query: Optional[list[str]] = typer.Option(None, "--query", "-q", help="Query text (repeatable); needs the table's model or --model."),
    queries: Optional[Path] = typer.Option(None, help="Or query vectors: .npy / Parquet."),
    adaptor: Optional[Path] = typer.Option(None, help="The adaptor folder the table was built with."),
    k: int = typer.Option(10, help="Results per query."),
    shortlist: int = typer.Option(100, help="First-stage candidates rescored with full vectors (0: no rescoring)."),
    model: Optional[str] = typer.Option(None, help="sentence-transformers model for text queries (default: the table's)."),
    table: str = typer.Option("funnel"),
):
    """Search; prints one JSON line per query: {"query", "ids", "scores"}.

    Example: matryoshka-adaptor index search db/ --adaptor my-adaptor/ -q "what causes migraines?" --k 10
    """
    from .funnel import FunnelIndex

    index = FunnelIndex.open(path, adaptor=adaptor, table=table)
    if (not query) == (queries is None):
        raise InputError("give --query TEXT (repeatable) or --queries FILE.")
    if query:
        source = None
        if model:
            from ..embed.sources import make_source

            source = make_source("sentence-transformers", model)
        res, labels = index.search(list(query), k=k, shortlist=shortlist, source=source), list(query)
    else:
        from ..formats import read_embeddings

        x, qids = read_embeddings(queries)
        res, labels = index.search(x, k=k, shortlist=shortlist), qids or list(range(len(x)))
    for label, ids, scores in zip(labels, res.ids, res.scores):
        typer.echo(json.dumps({"query": label, "ids": ids, "scores": [round(float(s), 6) for s in scores]}))


@app.command()
def info(
    path: Path = typer.Argument(..., help="LanceDB folder with a funnel table."),
    table: str = typer.Option("funnel"),
):
    """What a funnel table holds (rows, version, prefix dim and precision, adaptor fingerprint) as JSON."""
    from .funnel import read_info

    out = read_info(path, table)
    typer.echo(json.dumps(out, indent=2))
