"""Embeddings from Cohere's v2 Embed API (``POST /v2/embed``), paid for once.

Same machinery as :mod:`.openai_api` (batching, concurrency, retries on 429/5xx with
``Retry-After``, the crash-safe SQLite cache, key hygiene); only the shapes differ:

* request: ``{"model": M, "texts": [...], "input_type": "search_query" | "search_document",
  "embedding_types": ["float"], "output_dimension": N}``, at most 96 texts a call;
* response: ``{"id": ..., "embeddings": {"float": [[...], ...]}, "texts": [...], "meta": {...}}``;
* errors: ``{"id": ..., "message": "..."}``.

The key is sent as ``Authorization: Bearer`` and never appears in an error message.
"""

from __future__ import annotations


from ..errors import InputError
from .input_types import INPUT_TYPES, check_input_type
from .openai_api import OpenAICompatibleSource

COHERE_BASE_URL = "https://api.cohere.com"
COHERE_MAX_BATCH = 96  # documented limit of texts per /v2/embed call
COHERE_INPUT_TYPES = {"query": "search_query", "document": "search_document"}


class CohereSource(OpenAICompatibleSource):
    """Encode texts with a Cohere embedding model (e.g. ``embed-v4.0``, ``embed-english-v3.0``).

    Parameters
    ----------
    model : str
        Cohere model name.
    input_type : {"query", "document"}
        Required: v3+ models refuse a request without ``input_type``; sent as search_query /
        search_document.
    dimensions : int, optional
        Sent as ``output_dimension`` (embed-v4.0 accepts 256, 512, 1024, 1536).
    base_url, api_key, api_key_env
        API root (default https://api.cohere.com), key (default from ``$CO_API_KEY``).
    **options
        Batching, concurrency, retry and cache options of :class:`OpenAICompatibleSource`.
    """

    provider = "cohere"

    def __init__(self, model: str, *, input_type: str | None = None, base_url: str = COHERE_BASE_URL,
                 api_key_env: str = "CO_API_KEY", batch_size: int = COHERE_MAX_BATCH, **options):
        if check_input_type(input_type) is None:
            raise InputError(f"Cohere needs an input type: pass input_type (--input-type) {' or '.join(INPUT_TYPES)}.")
        if batch_size > COHERE_MAX_BATCH:
            raise InputError(f"batch_size {batch_size} is above Cohere's limit of {COHERE_MAX_BATCH} texts a call.")
        super().__init__(model, base_url=base_url, api_key_env=api_key_env, batch_size=batch_size, **options)
        self.input_type = input_type

    def __repr__(self) -> str:  # never shows the key
        return (f"CohereSource(model={self.model!r}, input_type={self.input_type!r}, "
                f"dimensions={self.dimensions}, base_url={self.base_url!r})")

    @property
    def source_key(self) -> str:
        return f"cohere:{self.model}:dim={self.dimensions or 'native'}:input={self.input_type}"

    def _endpoint(self) -> str:
        return f"{self.base_url}/v2/embed"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _request_body(self, texts: list[str]) -> dict:
        body = {"model": self.model, "texts": texts, "input_type": COHERE_INPUT_TYPES[self.input_type],
                "embedding_types": ["float"]}
        if self.dimensions is not None:
            body["output_dimension"] = self.dimensions
        return body

    def _status_hint(self, status: int) -> str:
        if status in (401, 403):
            return f" Check the API key (read from ${self.api_key_env} or --api-key-env)."
        if status == 404:
            return " Check --model (e.g. embed-v4.0) and --base-url (the API root, without /v2)."
        return ""

    def _rows(self, body, n: int, refuse) -> list:
        embeddings = body.get("embeddings") if isinstance(body, dict) else None
        rows = embeddings.get("float") if isinstance(embeddings, dict) else None
        if not isinstance(rows, list):
            raise refuse("a body that is not a v2 embed response (no 'embeddings.float' list)")
        return rows
