"""Precomputed vectors found by name beside each dataset: ``<dataset>/embeddings/<name>/``.

A dataset without its own folder of that name is looked up by id in its *siblings'* folders (the
other datasets in the same parent folder): a pool built from several datasets, such as XQuAD-R's
``pool/`` made of its eleven language folders, needs no copy of their vectors. Every corpus and
query id must be found exactly once, or the lookup fails with one line saying what is missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..embed.sources import Precomputed, load_precomputed
from ..errors import InputError


def own_vectors_folder(dataset_path: str | Path, name: str) -> Path:
    return Path(dataset_path) / "embeddings" / name


def sibling_vector_folders(dataset_path: str | Path, name: str) -> list[Path]:
    """``<sibling>/embeddings/<name>/`` of every other dataset in the same parent folder, sorted."""
    path = Path(dataset_path).resolve()
    return [s / "embeddings" / name for s in sorted(path.parent.iterdir())
            if s.is_dir() and s != path and (s / "embeddings" / name / "ids.json").is_file()]


def vectors_source(dataset_path: str | Path, name: str) -> str:
    """Where the vectors of ``name`` for this dataset come from: ``"own"``, ``"siblings"``; else an error."""
    if (own_vectors_folder(dataset_path, name) / "ids.json").is_file():
        return "own"
    if sibling_vector_folders(dataset_path, name):
        return "siblings"
    raise InputError(f"no precomputed vectors named {name!r} for dataset {dataset_path}: neither "
                     f"{own_vectors_folder(dataset_path, name)} nor a sibling dataset's embeddings/{name}/ exists; "
                     "check --embeddings-name, or encode with --provider/--model instead.")


def find_vectors(dataset_path: str | Path, name: str, corpus_ids: list[str],
                 query_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Corpus and query vectors in the given id order, from the dataset's own folder or its siblings'.

    Parameters
    ----------
    dataset_path : path
        The BEIR dataset folder.
    name : str
        The embeddings folder name (e.g. ``multilingual-e5-small-q4``).
    corpus_ids, query_ids : list of str
        The rows wanted, in order.

    Returns
    -------
    corpus, queries : ndarray of float32
    """
    where = vectors_source(dataset_path, name)
    folders = ([own_vectors_folder(dataset_path, name)] if where == "own"
               else sibling_vector_folders(dataset_path, name))
    parts = [load_precomputed(f) for f in folders]
    corpus = _gather(parts, "corpus", corpus_ids, dataset_path, name, where)
    queries = _gather(parts, "queries", query_ids, dataset_path, name, where)
    return corpus, queries


def _gather(parts: list[Precomputed], kind: str, wanted: list[str], dataset_path, name: str, where: str) -> np.ndarray:
    pos: dict[str, tuple[int, int]] = {}
    for p_i, part in enumerate(parts):
        for r_i, i in enumerate(part.corpus_ids if kind == "corpus" else part.query_ids):
            if i in pos:
                raise InputError(f"{kind} id {i!r} has vectors in two sibling folders of {dataset_path} "
                                 f"(embeddings/{name}); ids must be unique across them.")
            pos[i] = (p_i, r_i)
    missing = [i for i in wanted if i not in pos]
    if missing:
        place = (f"{own_vectors_folder(dataset_path, name)}" if where == "own"
                 else f"the sibling folders' embeddings/{name}/ of {dataset_path}")
        raise InputError(f"{len(missing)} {kind} id(s) of {dataset_path} have no vector in {place} "
                         f"(first: {missing[0]!r}); recompute the vectors for this dataset.")
    d = {(part.corpus if kind == "corpus" else part.queries).shape[1] for part in parts}
    if len(d) != 1:
        raise InputError(f"the sibling folders' embeddings/{name}/ of {dataset_path} have different widths {sorted(d)}.")
    out = np.empty((len(wanted), d.pop()), np.float32)
    for k, i in enumerate(wanted):
        p_i, r_i = pos[i]
        out[k] = (parts[p_i].corpus if kind == "corpus" else parts[p_i].queries)[r_i]
    return out
