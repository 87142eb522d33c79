"""An adaptor as a sentence-transformers module, and a folder that ``SentenceTransformer`` loads.

``export_sentence_transformer(adaptor, "sentence-transformers/all-MiniLM-L6-v2", "out/")``
writes the base model's modules followed by :class:`MatryoshkaAdaptorModule` (the adaptor's
own ``config.json`` + ``model.safetensors``, no pickle), a ``modules.json`` naming it, and a
model card, so that::

    model = SentenceTransformer("out/", trust_remote_code=True)
    model.encode(texts)                                     # adapted, full dim, unit length
    model.encode(texts, truncate_dim=64, normalize_embeddings=True)
    # == adaptor.transform(base.encode(texts), dim=64)

``trust_remote_code=True``: sentence-transformers 6 asks for it before importing any module
class outside its own package (here :class:`MatryoshkaAdaptorModule`, from the installed
matryoshka-adaptor; no code is read from the folder). Versions 3-5 load without it.

sentence-transformers cuts to ``truncate_dim`` *after* the last module, and renormalises only
when ``normalize_embeddings=True``; without it the 64-dim vectors differ from the adaptor's by
a positive factor per row, so cosine scores (the model's similarity function) and every
ranking are the same.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Module

from ..errors import InputError
from ..estimator import MatryoshkaAdaptor


class MatryoshkaAdaptorModule(Module):
    """The adaptor as the last module of a ``SentenceTransformer``: ``sentence_embedding`` -> adapted, unit length.

    Parameters
    ----------
    adaptor : MatryoshkaAdaptor
        A fitted (or loaded) adaptor whose ``input_dim_`` equals the model's embedding size.

    Notes
    -----
    Saved as the adaptor's own folder (``config.json`` + ``model.safetensors``), so
    ``MatryoshkaAdaptor.load`` reads the module folder too. The weights are frozen: training
    the whole ``SentenceTransformer`` leaves the adaptor as fitted.
    """

    def __init__(self, adaptor: MatryoshkaAdaptor):
        super().__init__()
        adaptor._check_fitted()
        self.adaptor = adaptor
        self.net = adaptor.to_torch().requires_grad_(False)

    def forward(self, features: dict, **kwargs) -> dict:
        x = features["sentence_embedding"]
        adapted, _ = self.net(x.to(torch.float32))
        features["sentence_embedding"] = torch.nn.functional.normalize(adapted, dim=-1).to(x.dtype)
        return features

    def get_embedding_dimension(self) -> int:
        return int(self.adaptor.input_dim_)

    def get_config_dict(self) -> dict:
        return {"input_dim": int(self.adaptor.input_dim_), "dims": list(self.adaptor.dims_),
                "base_model": self.adaptor.base_model}

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        if not safe_serialization:
            raise InputError("the adaptor module is saved in safetensors only (no pickle); drop safe_serialization=False.")
        self.adaptor.save(output_path)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token=None, cache_folder=None, revision=None,
             local_files_only: bool = False, **kwargs) -> MatryoshkaAdaptorModule:
        path = cls.load_dir_path(model_name_or_path, subfolder=subfolder, token=token, cache_folder=cache_folder,
                                 revision=revision, local_files_only=local_files_only)
        if path is None:
            raise InputError(f"{model_name_or_path} has no {subfolder!r} folder holding the adaptor module.")
        return cls(MatryoshkaAdaptor.load(path))


def _model_card(adaptor: MatryoshkaAdaptor, base_model: str, folder_name: str, benchmark: str | None) -> str:
    dims = ", ".join(str(d) for d in adaptor.dims_)
    example_dim = 64 if 64 in adaptor.dims_ else adaptor.dims_[len(adaptor.dims_) // 2]
    info = adaptor.info()
    fit = info.get("fit_summary") or {}
    lines = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: sentence-similarity",
        "tags:", "- sentence-transformers", "- feature-extraction", "- sentence-similarity", "- matryoshka-adaptor",
        f"base_model: {base_model}" if "/" in base_model and not Path(base_model).exists() else "",
        "---",
        "",
        f"# {folder_name}: {Path(base_model.rstrip('/')).name} with a Matryoshka-Adaptor",
        "",
        f"[{base_model}](https://huggingface.co/{base_model}) followed by a "
        "[Matryoshka-Adaptor](https://arxiv.org/abs/2407.20243) (Yoon et al., EMNLP 2024): a residual MLP "
        "over the frozen embeddings, trained so that the first *m* dimensions keep retrieval quality. "
        f"Trained dimensions: {dims} (of {adaptor.input_dim_}); "
        f"{'supervised (labeled queries)' if adaptor.supervised_ else 'unsupervised'}, recipe `{adaptor.recipe}`.",
        "",
        "## Usage",
        "",
        "```bash",
        "pip install sentence-transformers matryoshka-adaptor",
        "```",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        f'model = SentenceTransformer("{folder_name}", trust_remote_code=True)',
        "# trust_remote_code: sentence-transformers >= 6 asks for it for any module class outside its own",
        "# package; the class is imported from the installed matryoshka-adaptor, nothing runs from this folder.",
        f"vectors = model.encode(texts, truncate_dim={example_dim}, "
        "normalize_embeddings=True)",
        "```",
        "",
        "`normalize_embeddings=True` renormalises after the cut, giving exactly the adaptor's vectors; "
        "without it cosine scores and rankings are the same. The module class lives in the "
        "`matryoshka-adaptor` package, which must be installed to load this model.",
        "",
    ]
    if benchmark:
        lines += ["## Benchmark the adaptor was chosen with", "", benchmark.strip(), ""]
    if fit:
        keep = {k: fit[k] for k in ("n_corpus", "n_queries", "total_seconds", "device") if k in fit}
        if keep:
            lines += ["## Training", "", ", ".join(f"{k}: {v}" for k, v in keep.items()), ""]
    return "\n".join(line for line in lines if line is not None) + "\n"


def read_benchmark_table(path: str | Path) -> str:
    """A benchmark table for the model card: a ``results.md`` as is, or ``results.json`` of the ``benchmark`` command."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--benchmark {path}: no such file; give results.md or results.json from `benchmark`.")
    if path.suffix == ".json":
        import json

        from ..eval.report import markdown_table

        try:
            return markdown_table(json.loads(path.read_text()))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"--benchmark {path} is not a results.json of the `benchmark` command ({exc}).") from exc
    return path.read_text()


def export_sentence_transformer(adaptor: MatryoshkaAdaptor | str | Path, base_model: str, out: str | Path, *,
                                benchmark: str | None = None, device: str = "cpu") -> Path:
    """Write ``out/``: the base model's modules, then the adaptor, loadable by ``SentenceTransformer(out)``.

    Parameters
    ----------
    adaptor : MatryoshkaAdaptor or path
        A fitted adaptor, or its folder.
    base_model : str
        The sentence-transformers model the adaptor was fitted on (name or folder).
    out : path
        A new (or empty) folder; written to a temporary sibling and renamed into place.
    benchmark : str, optional
        A markdown table for the model card (see :func:`read_benchmark_table`).
    device : str
        Where the base model is loaded for the export.

    Returns
    -------
    Path
        ``out``.
    """
    from ..embed.sources import resolve_model_path

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} exists and is not an empty folder; choose a new --out folder.")
    if not isinstance(adaptor, MatryoshkaAdaptor):
        adaptor = MatryoshkaAdaptor.load(adaptor)
    try:
        model = SentenceTransformer(resolve_model_path(base_model), device=device)
    except OSError as exc:
        raise InputError(f"could not load base model {base_model!r} ({exc}); give a local folder or a hub name.") from exc
    dim = model.get_embedding_dimension()
    if dim != adaptor.input_dim_:
        raise InputError(f"the adaptor takes {adaptor.input_dim_}-dim vectors but {base_model} gives {dim}-dim ones; "
                         "export it with the model it was fitted on.")
    if adaptor.base_model and resolve_model_path(adaptor.base_model) != resolve_model_path(base_model) \
            and Path(adaptor.base_model).name != Path(base_model.rstrip("/")).name:
        warnings.warn(f"the adaptor's config names {adaptor.base_model!r} as its base model, not {base_model!r}; "
                      "exporting anyway (same dimension).", stacklevel=2)
    model.append(MatryoshkaAdaptorModule(adaptor))
    model.similarity_fn_name = "cosine"
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        model.save(str(staging))
        # A local folder says nothing on the Hub: name the model the adaptor was fitted on instead.
        card_name = base_model if not Path(base_model).exists() else (adaptor.base_model or Path(base_model).name)
        (staging / "README.md").write_text(_model_card(adaptor, card_name, out.name, benchmark))
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def beir_ir_evaluator(dataset: str | Path, split: str = "test", *, truncate_dim: int | None = None,
                      max_queries: int | None = None, max_other_docs: int | None = None, **evaluator_options):
    """sentence-transformers' ``InformationRetrievalEvaluator`` over a BEIR folder (or a slice of it).

    Parameters
    ----------
    dataset : path
        BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/{split}.tsv``).
    split : str
        The qrels split to evaluate.
    truncate_dim : int, optional
        Passed to the evaluator: it encodes with ``truncate_dim`` and scores with the model's
        similarity function.
    max_queries, max_other_docs : int, optional
        A slice for quick checks: the first ``max_queries`` judged queries, and a corpus of their
        relevant documents plus the first ``max_other_docs`` others (default: everything).
    **evaluator_options
        Further ``InformationRetrievalEvaluator`` arguments (``batch_size``, ``show_progress_bar``...).
    """
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    from ..eval.datasets import load_beir

    ds = load_beir(dataset)
    queries = ds.split_queries(split)
    if max_queries is not None:
        queries = dict(list(queries.items())[:max_queries])
    qrels = {q: {d for d, g in ds.qrels[split][q].items() if g > 0} for q in queries}
    texts = dict(zip(ds.corpus_ids, ds.doc_texts()))
    if max_other_docs is not None:
        relevant = {d for docs in qrels.values() for d in docs}
        keep = relevant | set([d for d in ds.corpus_ids if d not in relevant][:max_other_docs])
        texts = {d: t for d, t in texts.items() if d in keep}
    return InformationRetrievalEvaluator(queries, texts, qrels, truncate_dim=truncate_dim,
                                         name=f"{ds.name}-{split}" + (f"-{truncate_dim}" if truncate_dim else ""),
                                         write_csv=False, **evaluator_options)
