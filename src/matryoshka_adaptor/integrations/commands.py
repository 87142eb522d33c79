"""The ``export`` command; kept here (and light: heavy imports happen inside) so cli.py only registers it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError


def export(
    adaptor: Path = typer.Option(..., "--adaptor", "-a", help="Adaptor folder written by `fit`."),
    base_model: str = typer.Option(..., "--base-model", "-m", help="sentence-transformers model it was fitted on (name or folder)."),
    out: Path = typer.Option(..., "--out", "-o", help="New folder for the combined model (SentenceTransformer(OUT, trust_remote_code=True) loads it)."),
    benchmark: Optional[Path] = typer.Option(None, help="results.md or results.json from `benchmark`, for the model card."),
):
    """Export an adaptor as a sentence-transformers model: base modules + the adaptor, push_to_hub-ready.

    Example: matryoshka-adaptor export --adaptor my-adaptor/ --base-model sentence-transformers/all-MiniLM-L6-v2
    --out minilm-adapted/   (then SentenceTransformer("minilm-adapted/", trust_remote_code=True)
    .encode(texts, truncate_dim=64, normalize_embeddings=True))
    """
    try:
        try:
            from .sentence_transformers import export_sentence_transformer, read_benchmark_table
        except ImportError as exc:
            raise ImportError(f"export needs sentence-transformers ({exc}); "
                              "`pip install 'matryoshka-adaptor[eval]'`.") from exc
        table = read_benchmark_table(benchmark) if benchmark is not None else None
        export_sentence_transformer(adaptor, base_model, out, benchmark=table)
    except (InputError, ImportError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    typer.echo(f"wrote a sentence-transformers model to {out}: SentenceTransformer({str(out)!r}, trust_remote_code=True)")
