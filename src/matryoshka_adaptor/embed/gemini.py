"""Embeddings from the Gemini API (``models/{model}:batchEmbedContents``), paid for once.

Same machinery as :mod:`.openai_api` (batching, concurrency, retries on 429/5xx with
``Retry-After``, the crash-safe SQLite cache, key hygiene); only the request and
response shapes differ:

* request: ``{"requests": [{"model": "models/M", "content": {"parts": [{"text": T}]},
  "taskType": "RETRIEVAL_QUERY" | "RETRIEVAL_DOCUMENT", "outputDimensionality": N}]}``,
  at most 100 requests a call;
* response: ``{"embeddings": [{"values": [...]}, ...]}`` in request order;
* errors: ``{"error": {"code": 400, "message": "...", "status": "INVALID_ARGUMENT"}}``.

The key travels in the ``x-goog-api-key`` header, never in the URL (where it would end
up in proxies' logs and in error messages).
"""

from __future__ import annotations


from ..errors import InputError
from .input_types import check_input_type
from .openai_api import OpenAICompatibleSource

GEMINI_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
GEMINI_MAX_BATCH = 100  # documented limit of requests per batchEmbedContents call
TASK_TYPES = {"query": "RETRIEVAL_QUERY", "document": "RETRIEVAL_DOCUMENT"}


class GeminiSource(OpenAICompatibleSource):
    """Encode texts with a Gemini embedding model (e.g. ``gemini-embedding-001``, ``text-embedding-004``).

    Parameters
    ----------
    model : str
        Model name, with or without the ``models/`` prefix.
    input_type : {"query", "document"} or None
        Sent as ``taskType`` RETRIEVAL_QUERY / RETRIEVAL_DOCUMENT; None sends no task type.
    dimensions : int, optional
        Sent as ``outputDimensionality`` (Google truncates its Matryoshka-trained output).
    base_url, api_key, api_key_env
        API root (default the public v1beta), key (default from ``$GEMINI_API_KEY``).
    **options
        Batching, concurrency, retry and cache options of :class:`OpenAICompatibleSource`.
    """

    provider = "gemini"

    def __init__(self, model: str, *, input_type: str | None = None, base_url: str = GEMINI_BASE_URL,
                 api_key_env: str = "GEMINI_API_KEY", batch_size: int = GEMINI_MAX_BATCH, **options):
        if batch_size > GEMINI_MAX_BATCH:
            raise InputError(f"batch_size {batch_size} is above Gemini's limit of {GEMINI_MAX_BATCH} texts a call.")
        model = model.removeprefix("models/")
        super().__init__(model, base_url=base_url, api_key_env=api_key_env, batch_size=batch_size, **options)
        self.input_type = check_input_type(input_type)

    def __repr__(self) -> str:  # never shows the key
        return (f"GeminiSource(model={self.model!r}, input_type={self.input_type!r}, "
                f"dimensions={self.dimensions}, base_url={self.base_url!r})")

    @property
    def source_key(self) -> str:
        # The task type changes the vector: it is part of the key.
        return f"gemini:{self.model}:dim={self.dimensions or 'native'}:input={self.input_type or 'none'}"

    def _endpoint(self) -> str:
        return f"{self.base_url}/models/{self.model}:batchEmbedContents"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["x-goog-api-key"] = self._api_key
        return headers

    def _request_body(self, texts: list[str]) -> dict:
        extra = {}
        if self.input_type is not None:
            extra["taskType"] = TASK_TYPES[self.input_type]
        if self.dimensions is not None:
            extra["outputDimensionality"] = self.dimensions
        return {"requests": [{"model": f"models/{self.model}", "content": {"parts": [{"text": t}]}, **extra}
                             for t in texts]}

    def _status_hint(self, status: int) -> str:
        if status in (400, 401, 403):
            return f" If the message is about the key, check ${self.api_key_env} (or --api-key-env)."
        if status == 404:
            return " Check --model (e.g. gemini-embedding-001) and --base-url (it should end in /v1beta)."
        return ""

    def _rows(self, body, n: int, refuse) -> list:
        embeddings = body.get("embeddings") if isinstance(body, dict) else None
        if not isinstance(embeddings, list):
            raise refuse("a body that is not a batchEmbedContents response (no 'embeddings' list)")
        return [item.get("values") if isinstance(item, dict) else None for item in embeddings]
