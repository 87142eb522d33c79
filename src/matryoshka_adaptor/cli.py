"""Command line: ``matryoshka-adaptor fit | transform | info | benchmark | embed | serve``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import InputError

app = typer.Typer(
    help="Matryoshka-Adaptor: shrink frozen embeddings to small dimensions without losing retrieval quality.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _int_list(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InputError(f"expected comma-separated integers such as 64,128,256; got {text!r}.") from None


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def _read_ids_json(path: Optional[Path]) -> tuple[Optional[list[str]], Optional[list[str]]]:
    if path is None:
        return None, None
    ids = json.loads(path.read_text())
    return ids.get("corpus_ids"), ids.get("query_ids")


@app.command()
def fit(
    corpus: Path = typer.Argument(..., help="Corpus embeddings: .npy (memory-mapped), .npz or .parquet."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to save the adaptor into."),
    dims: Optional[str] = typer.Option(None, help="Matryoshka dims to train, e.g. 32,64,128,256 (default: 16,32,... and d)."),
    queries: Optional[Path] = typer.Option(None, help="Query embeddings (same formats): unlabeled, or labeled with --qrels."),
    qrels: Optional[Path] = typer.Option(None, help="BEIR qrels TSV (query-id, corpus-id, score): runs the supervised stage."),
    ids: Optional[Path] = typer.Option(None, help="ids.json with corpus_ids and query_ids in row order (else ids from the files, else row numbers)."),
    recipe: str = typer.Option("default", help="'default' (PCA start + listwise distillation) or 'paper' (the paper's method)."),
    steps: Optional[int] = typer.Option(None, help="Maximum unsupervised steps (default: the recipe's)."),
    supervised_steps: Optional[int] = typer.Option(None, help="Maximum supervised steps (default: the recipe's)."),
    hidden_dim: Optional[int] = typer.Option(None, help="MLP width (default: input dim)."),
    batch_size: int = typer.Option(128),
    lr: float = typer.Option(1e-3),
    k: int = typer.Option(10, help="Neighbours per vector for the top-k loss."),
    max_fit_vectors: int = typer.Option(50_000, help="Corpus rows sampled for fitting."),
    neighbor_search: str = typer.Option("auto", help="auto, exact or faiss."),
    column: Optional[str] = typer.Option(None, help="Parquet/npz embedding column (default: embedding)."),
    base_model: Optional[str] = typer.Option(None, help="Name of the embedding model, stored in config.json."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto (GPU when there is one), cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """Fit an adaptor on corpus embeddings and save it as a folder.

    Example: matryoshka-adaptor fit corpus.npy --out my-adaptor/ --dims 32,64,128,256
    """
    from .estimator import MatryoshkaAdaptor
    from .eval.datasets import read_qrels
    from .formats import read_embeddings

    try:
        x, file_cids = read_embeddings(corpus, column=column)
        cids, qids = _read_ids_json(ids)
        cids = cids or file_cids
        q = None
        labels = None
        if queries is not None:
            q, file_qids = read_embeddings(queries, column=column)
            qids = qids or file_qids
        if qrels is not None:
            if q is None:
                raise InputError("--qrels needs --queries (the query embeddings the qrels refer to).")
            labels = read_qrels(qrels)
            if qids is not None:  # qrels of other splits may name queries not given: keep the known ones
                known = set(map(str, qids))
                labels = {k_: v for k_, v in labels.items() if k_ in known}
        est = MatryoshkaAdaptor(
            dims=_int_list(dims), recipe=recipe, steps=steps, supervised_steps=supervised_steps,
            hidden_dim=hidden_dim, batch_size=batch_size, lr=lr, k=k, max_fit_vectors=max_fit_vectors,
            neighbor_search=neighbor_search, seed=seed, device=device, progress=not quiet, base_model=base_model,
        )
        est.fit(x, q, labels, corpus_ids=cids, query_ids=qids)
        est.save(out)
    except (InputError, ImportError) as exc:
        _fail(exc)
    s = est.fit_summary_
    typer.echo(f"saved adaptor to {out} (dims {list(est.dims_)}, {s['total_seconds']:.1f} s on {s['device']})")


@app.command()
def transform(
    adaptor: Path = typer.Argument(..., help="Adaptor folder written by `fit`."),
    input: Path = typer.Argument(..., help="Embeddings to adapt: .npy, .npz or .parquet."),
    output: Path = typer.Argument(..., help="Where to write: .npy, .npz or .parquet (ids are kept)."),
    dim: Optional[int] = typer.Option(None, "--dim", "-d", help="Output dimension (default: full)."),
    column: Optional[str] = typer.Option(None, help="Embedding column of Parquet/npz input (default: embedding)."),
    id_column: Optional[str] = typer.Option(None, help="Id column of Parquet input (default: id)."),
    chunk_rows: int = typer.Option(8192, help="Rows per chunk: bounds memory for inputs larger than RAM."),
    engine: str = typer.Option("local", help="local (this process) or ray: INPUT is a folder or glob of Parquet "
                                             "shards, OUTPUT a folder; one output shard per input shard, resumable."),
    ray_address: Optional[str] = typer.Option(None, help="--engine ray: an existing cluster, e.g. ray://head:10001 "
                                                          "or auto (default: start a local Ray)."),
    workers: int = typer.Option(2, help="--engine ray: tasks applying the adaptor at once (one CPU each)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Apply an adaptor: adapted vectors, cut to --dim and L2-normalised, streamed in chunks (numpy only).

    Example: matryoshka-adaptor transform my-adaptor/ corpus.npy corpus-64.npy --dim 64

    Example (Ray): matryoshka-adaptor transform my-adaptor/ 'shards/*.parquet' out-64/ --dim 64 --engine ray --workers 8
    """
    if engine != "local":
        _transform_on_engine(engine, adaptor, str(input), output, dim, column, id_column, chunk_rows, ray_address,
                             workers, quiet)
        return
    from .estimator import MatryoshkaAdaptor
    from .formats import transform_file
    from .validation import check_embeddings, check_output_dim

    try:
        est = MatryoshkaAdaptor.load(adaptor)
        dim = check_output_dim(dim, est.input_dim_)
        np_adaptor = est._numpy_adaptor()

        def apply(chunk, offset):
            chunk = check_embeddings(chunk, name=f"{input}", expected_dim=est.input_dim_)
            return np_adaptor.apply(chunk, dim, offset=offset)

        n = transform_file(input, output, apply, dim, column=column, id_column=id_column,
                           chunk_rows=chunk_rows, progress=not quiet)
    except InputError as exc:
        _fail(exc)
    typer.echo(f"wrote {n} x {dim} vectors to {output}")


def _transform_on_engine(engine, adaptor, source, output, dim, column, id_column, batch_rows, ray_address, workers,
                         quiet) -> None:
    """`transform --engine ray`: Parquet shards in, one adapted shard out per input shard."""
    if engine != "ray":
        _fail(InputError(f"--engine must be 'local' or 'ray'; got {engine!r}."))
    try:
        from .distributed.ray_transform import transform_parquet_shards

        report = transform_parquet_shards(adaptor, source, output, dim=dim, column=column, id_column=id_column,
                                          num_workers=workers, batch_rows=batch_rows, ray_address=ray_address,
                                          progress=not quiet)
    except (InputError, ImportError) as exc:
        _fail(exc)
    typer.echo(f"wrote {len(report.written)} shard(s), {report.rows_written} rows, to {output} "
               f"({len(report.skipped)} already complete, skipped) in {report.seconds:.1f} s")


@app.command()
def info(adaptor: Path = typer.Argument(..., help="Adaptor folder.")):
    """Print what an adaptor folder holds (dims, architecture, training summary) as JSON.

    Example: matryoshka-adaptor info my-adaptor/
    """
    from .estimator import MatryoshkaAdaptor

    try:
        est = MatryoshkaAdaptor.load(adaptor)
    except InputError as exc:
        _fail(exc)
    typer.echo(json.dumps(est.info(), indent=2))


@app.command()
def benchmark(
    dataset: str = typer.Option(..., help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/) or a BEIR name to download."),
    out: Path = typer.Option(..., help="Output folder for results.json, .csv, .md and ndcg_vs_dim.png."),
    model: Optional[str] = typer.Option(None, help="sentence-transformers model name or folder (vectors cached on disk)."),
    embeddings: Optional[Path] = typer.Option(None, help="Precomputed vectors: folder with corpus.npy, queries.npy, ids.json."),
    dims: str = typer.Option("16,32,64,128,256", help="Dimensions to evaluate."),
    methods: str = typer.Option("truncate,pca,adaptor,adaptor-supervised",
                                help="Comma-separated: truncate, pca, pca-centered, adaptor, adaptor-queries, "
                                     "adaptor-supervised, adaptor-paper, adaptor-paper-supervised."),
    seeds: str = typer.Option("0", help="Seeds for the adaptor methods, e.g. 0,1,2 (mean and spread reported)."),
    split: str = typer.Option("test", help="qrels split to evaluate on."),
    train_split: str = typer.Option("train", help="qrels split the supervised adaptor trains on."),
    cache: Optional[Path] = typer.Option(None, help="SQLite embedding cache (default ~/.cache/matryoshka-adaptor)."),
    adaptor_params: Optional[str] = typer.Option(None, help='JSON of MatryoshkaAdaptor parameters, e.g. \'{"steps": 800}\'.'),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """nDCG@10 against dimension for each method on a BEIR dataset; writes a table and the plot.

    Example: matryoshka-adaptor benchmark --dataset ../shared/data/scifact --model sentence-transformers/all-MiniLM-L6-v2
    --dims 16,32,64,128,256 --methods truncate,pca,adaptor,adaptor-supervised --out results/scifact-minilm
    """
    from .eval.benchmark import BenchmarkConfig, run_benchmark
    from .eval.report import markdown_table, write_report

    try:
        cfg = BenchmarkConfig(
            dataset=dataset, model=model, embeddings=str(embeddings) if embeddings else None,
            dims=tuple(_int_list(dims)), methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
            seeds=tuple(_int_list(seeds)), split=split, train_split=train_split,
            cache=str(cache) if cache else None, adaptor_params=json.loads(adaptor_params) if adaptor_params else {},
        )
        result = run_benchmark(cfg, progress=not quiet)
    except (InputError, ImportError, json.JSONDecodeError) as exc:
        _fail(exc)
    paths = write_report(result, out)
    typer.echo(markdown_table(result))
    typer.echo(f"wrote {', '.join(str(p) for p in paths.values())}")


@app.command()
def embed(
    input: Path = typer.Option(..., "--input", "-i", help="Texts: BEIR-style .jsonl (_id, title, text) or .txt (one per line)."),
    out: Path = typer.Option(..., "--out", "-o", help="Vectors: .npy (ids in OUT.ids.json), .npz or .parquet (ids inside)."),
    provider: str = typer.Option("openai", help="openai (any OpenAI-compatible endpoint) or sentence-transformers (local)."),
    model: str = typer.Option(..., help="Model name, e.g. text-embedding-3-large, or a sentence-transformers name/folder."),
    base_url: str = typer.Option("https://api.openai.com/v1", help="OpenAI-compatible API root (ends in /v1)."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable holding the API key."),
    dimensions: Optional[int] = typer.Option(None, help="Ask the API for this many dims (models that support it)."),
    text_field: Optional[str] = typer.Option(None, help="JSONL field to embed (default: title + text)."),
    batch_size: int = typer.Option(256, help="Texts per request (sentence-transformers: per forward pass)."),
    max_batch_tokens: int = typer.Option(100_000, help="Estimated tokens per request (openai)."),
    concurrency: int = typer.Option(4, help="Requests in flight at once (openai)."),
    max_retries: int = typer.Option(8, help="Retries per request on 429, 5xx and timeouts (openai)."),
    cache: Optional[Path] = typer.Option(None, help="SQLite vector cache (default ~/.cache/matryoshka-adaptor/embeddings.sqlite)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Embed texts once: every vector is cached on disk as it arrives, so a rerun resumes and never pays twice.

    Example: OPENAI_API_KEY=... matryoshka-adaptor embed --provider openai --model text-embedding-3-large
    --input corpus.jsonl --out corpus.npy
    """
    from .errors import UpstreamError
    from .embed.sources import default_cache_path, make_source
    from .embed.texts import read_texts
    from .formats import file_kind, write_embeddings
    from .persistence import atomic_write_bytes

    try:
        ids, texts = read_texts(input, text_field=text_field)
        kind = file_kind(out)
        if provider == "openai":
            options = dict(base_url=base_url, api_key_env=api_key_env, dimensions=dimensions, batch_size=batch_size,
                           max_batch_tokens=max_batch_tokens, concurrency=concurrency, max_retries=max_retries)
        else:
            if dimensions is not None:
                raise InputError("--dimensions applies to --provider openai; fit an adaptor to shrink local vectors.")
            options = dict(batch_size=batch_size)
        source = make_source(provider, model, cache_path=cache or default_cache_path(), **options)
        vectors = source.encode(texts, progress=not quiet)
        write_embeddings(out, vectors, ids if kind != "npy" else None)
        if kind == "npy":
            atomic_write_bytes(Path(f"{out}.ids.json"), json.dumps({"ids": ids}).encode())
    except (InputError, UpstreamError, ImportError) as exc:
        _fail(exc)
    stats = getattr(source, "last_stats", None)
    if stats is not None:
        typer.echo(stats.summary())
    typer.echo(f"wrote {vectors.shape[0]} x {vectors.shape[1]} vectors to {out}")


@app.command()
def serve(
    adaptor: Optional[Path] = typer.Option(None, help="Adaptor folder; without it the server passes vectors through."),
    upstream: Optional[str] = typer.Option(None, help="OpenAI-compatible API root to embed with, e.g. https://api.openai.com/v1."),
    upstream_model: Optional[str] = typer.Option(None, help="Model name at the upstream."),
    upstream_api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable with the upstream's key."),
    local_model: Optional[str] = typer.Option(None, help="sentence-transformers model name or folder to embed with locally."),
    served_model_name: Optional[str] = typer.Option(None, help="`model` clients must send (default: the upstream/local model's name)."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (loopback unless told otherwise)."),
    port: int = typer.Option(8000),
    api_key_env: Optional[str] = typer.Option(None, help="Require `Authorization: Bearer $NAME` from clients."),
    max_inputs: int = typer.Option(2048, help="Texts per request."),
    max_text_chars: int = typer.Option(32_768, help="Characters per text."),
    max_batch_texts: int = typer.Option(256, help="Texts per model call when concurrent requests are batched."),
    batch_window_ms: float = typer.Option(2.0, help="How long a model call waits for more requests to join it."),
    upstream_retries: int = typer.Option(2, help="Retries of a failed upstream call before answering 502."),
    upstream_timeout: float = typer.Option(30.0, help="Seconds to wait for the upstream."),
    inject_failures: Optional[str] = typer.Option(None, help="Testing: answer the first calls with these statuses, e.g. 429,503."),
    log_level: str = typer.Option("info"),
):
    """Serve OpenAI-compatible /v1/embeddings with a working `dimensions` for any model.

    Example: matryoshka-adaptor serve --adaptor my-adaptor/ --local-model sentence-transformers/all-MiniLM-L6-v2
    """
    import os

    try:
        try:
            from .serve.server import build_app, run_server
        except ImportError as exc:
            raise ImportError(f"serving needs FastAPI and uvicorn ({exc}); `pip install 'matryoshka-adaptor[serve]'`.") from exc
        if api_key_env and not os.environ.get(api_key_env):
            raise InputError(f"--api-key-env {api_key_env}: that environment variable is empty or unset.")
        app_, name = build_app(
            adaptor=adaptor, upstream=upstream, upstream_model=upstream_model,
            upstream_api_key_env=upstream_api_key_env, local_model=local_model, served_model_name=served_model_name,
            api_key=os.environ.get(api_key_env) if api_key_env else None, max_inputs=max_inputs,
            max_text_chars=max_text_chars, max_batch_texts=max_batch_texts, batch_window_ms=batch_window_ms,
            upstream_retries=upstream_retries, upstream_timeout=upstream_timeout,
            inject_failures=_int_list(inject_failures) or [],
        )
    except (InputError, ImportError) as exc:
        _fail(exc)
    typer.echo(f"serving {name!r} on http://{host}:{port}/v1 (adaptor: {adaptor or 'none, pass-through'})", err=True)
    run_server(app_, host=host, port=port, log_level=log_level)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
