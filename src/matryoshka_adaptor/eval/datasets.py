"""BEIR datasets: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/{split}.tsv`` (graded relevance kept)."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..formats import read_qrels  # noqa: F401  (re-exported: the reader lives beside the other readers)
from ..paths import cache_root

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"


@dataclass
class BeirDataset:
    name: str
    path: Path
    corpus: dict[str, dict[str, str]]  # doc id -> {"title", "text"}
    queries: dict[str, str]  # query id -> text
    qrels: dict[str, dict[str, dict[str, int]]]  # split -> query id -> doc id -> grade

    @property
    def corpus_ids(self) -> list[str]:
        return list(self.corpus)

    def doc_texts(self) -> list[str]:
        """Document text as BEIR and sentence-transformers evaluate it: ``title + " " + text``."""
        return [(d.get("title", "") + " " + d.get("text", "")).strip() for d in self.corpus.values()]

    def split_queries(self, split: str) -> dict[str, str]:
        """Queries that have at least one judgement in ``split``, in queries.jsonl order."""
        if split not in self.qrels:
            raise InputError(f"{self.path} has no qrels/{split}.tsv (splits: {sorted(self.qrels)}).")
        judged = self.qrels[split]
        return {q: t for q, t in self.queries.items() if q in judged}


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{line_no} is not valid JSON ({exc}).") from exc
    return rows


def load_beir(path: str | Path) -> BeirDataset:
    """Load a BEIR folder from disk."""
    path = Path(path)
    missing = [p for p in ("corpus.jsonl", "queries.jsonl", "qrels") if not (path / p).exists()]
    if missing:
        raise InputError(
            f"{path} is not a BEIR dataset folder: missing {', '.join(missing)}. "
            "Expected corpus.jsonl, queries.jsonl and qrels/<split>.tsv."
        )
    corpus = {str(r["_id"]): {"title": r.get("title") or "", "text": r.get("text") or ""}
              for r in _read_jsonl(path / "corpus.jsonl")}
    queries = {str(r["_id"]): r.get("text") or "" for r in _read_jsonl(path / "queries.jsonl")}
    qrels = {p.stem: read_qrels(p) for p in sorted((path / "qrels").glob("*.tsv"))}
    if not qrels:
        raise InputError(f"{path}/qrels holds no <split>.tsv files.")
    return BeirDataset(path.name, path, corpus, queries, qrels)


def resolve_dataset(name_or_path: str, cache_dir: str | Path | None = None, *, timeout: float = 20.0) -> BeirDataset:
    """A local BEIR folder, or a BEIR dataset name downloaded (once) into the cache folder."""
    path = Path(name_or_path)
    if path.exists():
        return load_beir(path)
    if os.sep in name_or_path or name_or_path.startswith("."):
        raise InputError(f"dataset folder {name_or_path} does not exist.")
    cache = Path(cache_dir) if cache_dir else cache_root() / "datasets"
    target = cache / name_or_path
    if target.exists():
        return load_beir(target)
    url = BEIR_URL.format(name=name_or_path)
    cache.mkdir(parents=True, exist_ok=True)
    tmp_zip = cache / f".{name_or_path}.zip.part"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp_zip, "wb") as out:
            shutil.copyfileobj(resp, out)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        tmp_zip.unlink(missing_ok=True)
        raise InputError(
            f"could not download BEIR dataset {name_or_path!r} from {url} ({exc}). Offline? Put the unzipped "
            f"BEIR folder at {target} (or pass --dataset PATH to a folder with corpus.jsonl, queries.jsonl, qrels/)."
        ) from exc
    staging = cache / f".{name_or_path}.unzip"
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(tmp_zip) as z:
        z.extractall(staging)
    inner = staging / name_or_path if (staging / name_or_path).is_dir() else staging
    os.replace(inner, target)
    shutil.rmtree(staging, ignore_errors=True)
    tmp_zip.unlink(missing_ok=True)
    return load_beir(target)
