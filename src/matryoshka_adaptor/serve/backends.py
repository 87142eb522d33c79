"""What the server embeds with: a local sentence-transformers model, or an upstream OpenAI-compatible API.

Both give the app the same four things: ``embed`` (texts to vectors), ``count_tokens``
(per text, for the cost bound and ``usage``), ``window`` (tokens per text the model
reads, or None) and ``decode`` (token ids to text, or None when the backend cannot).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random

import numpy as np

from ..embed.openai_api import approx_tokens, error_message, parse_retry_after
from .api_error import ApiError, public_url, redact_urls

log = logging.getLogger("matryoshka_adaptor.serve")


class LocalBackend:
    """A sentence-transformers model run on the batcher's model thread.

    Tokens are counted with a private copy of the model's fast tokenizer (truncation and
    padding off), so counting on the event loop never races the model call, which
    changes the shared tokenizer's truncation settings.
    """

    def __init__(self, model, *, batch_size: int = 64):
        self.model = model
        self.batch_size = batch_size
        self.window = int(model.max_seq_length) if getattr(model, "max_seq_length", None) else None
        tok = model.tokenizer
        self._tokenizer = tok
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is not None:
            from tokenizers import Tokenizer

            self._counter = Tokenizer.from_str(backend.to_str())
            self._counter.no_truncation()
            self._counter.no_padding()
        else:
            self._counter = None
        self.vocab_size = len(tok)

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False).astype(np.float32, copy=False)

    def count_tokens(self, texts: list[str]) -> list[int]:
        if self._counter is not None:
            return [len(e.ids) for e in self._counter.encode_batch(texts)]
        enc = self._tokenizer(texts, add_special_tokens=True, truncation=False)
        return [len(ids) for ids in enc["input_ids"]]

    def decode(self, ids: list[int]) -> str:
        # The private copy again: the model thread may be changing the shared tokenizer's settings,
        # and the Rust tokenizer refuses ("Already borrowed") a second user meanwhile.
        if self._counter is not None:
            return self._counter.decode(ids, skip_special_tokens=True)
        return self._tokenizer.decode(ids, skip_special_tokens=True)


class UpstreamBackend:
    """An OpenAI-compatible API, called asynchronously with one overall deadline per call.

    Retryable failures (429, 5xx, no answer) are retried with jittered backoff (or the
    upstream's ``Retry-After``) while the deadline allows; permanent 4xx are not retried.
    What a client sees never contains the upstream URL, its credentials or the name of
    the variable holding the key; logs show the URL without userinfo.
    """

    window = None
    vocab_size = None

    def __init__(self, base_url: str, model: str, *, api_key: str | None, timeout_s: float, retries: int,
                 backoff_base_s: float = 0.25, client=None):
        import httpx

        self.url = base_url.rstrip("/") + "/embeddings"
        self.public_url = public_url(self.url)
        self.model = model
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_base_s = backoff_base_s
        self._client = client or httpx.AsyncClient(timeout=timeout_s, limits=httpx.Limits(max_connections=16))
        self.upstream_calls = 0

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [approx_tokens(t) for t in texts]  # the upstream's tokenizer is unknown here

    decode = None

    def _redact(self, text: str) -> str:
        text = redact_urls(text).replace(self.url, self.public_url)
        return text.replace(self._api_key, "***") if self._api_key else text

    async def embed(self, texts: list[str]) -> np.ndarray:
        import httpx

        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        body = {"model": self.model, "input": texts, "encoding_format": "float"}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        last_status, retry_after = None, None
        for attempt in range(self.retries + 1):
            left = deadline - loop.time()
            if left <= 0:
                break
            self.upstream_calls += 1
            try:
                response = await self._client.post(self.url, json=body, headers=headers, timeout=left)
            except httpx.TransportError as exc:
                last_status, retry_after = None, None
                log.warning("upstream %s gave no answer: %s", self.public_url, self._redact(f"{type(exc).__name__}: {exc}"))
            else:
                if response.status_code == 200:
                    return self._parse(response, len(texts))
                last_status = response.status_code
                message = self._redact(error_message(response))
                log.warning("upstream %s answered HTTP %d: %s", self.public_url, last_status, message)
                if last_status in (401, 403):
                    raise ApiError(last_status, f"the upstream embedding API refused this server's credentials "
                                                f"(HTTP {last_status}); the server's operator must fix its key.",
                                   kind="upstream_error", code="upstream_auth")
                if 400 <= last_status < 500 and last_status not in (408, 409, 429):
                    raise ApiError(400 if last_status in (404, 422) else last_status,
                                   f"the upstream embedding API rejected the request (HTTP {last_status}): {message}",
                                   kind="invalid_request_error", code="upstream_rejected")
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            if attempt == self.retries:
                break
            wait = retry_after if retry_after is not None else random.uniform(0, self.backoff_base_s * 2**attempt)
            if loop.time() + wait >= deadline:
                break
            await asyncio.sleep(wait)
        status = f"HTTP {last_status}" if last_status else "no answer"
        if last_status is None or last_status in (408, 429, 502, 503, 504):
            after = max(1, int(retry_after or 1))
            raise ApiError(503, f"the upstream embedding API is unavailable ({status}) after {attempt + 1} tries "
                                f"within {self.timeout_s:g} s; retry after {after} s.",
                           kind="upstream_unavailable", code="upstream_unavailable",
                           headers={"Retry-After": str(after)})
        raise ApiError(502, f"the upstream embedding API failed ({status}).", kind="upstream_error",
                       code="upstream_error")

    def _parse(self, response, n: int) -> np.ndarray:
        try:
            data = sorted(response.json()["data"], key=lambda item: item["index"])
            vectors = np.asarray([item["embedding"] for item in data], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("upstream %s answered 200 with a body that is not an embeddings response (%s)",
                        self.public_url, type(exc).__name__)
            raise ApiError(502, "the upstream embedding API answered with a malformed body.",
                           kind="upstream_error", code="upstream_error") from None
        if vectors.ndim != 2 or len(vectors) != n or not np.isfinite(vectors).all():
            raise ApiError(502, f"the upstream embedding API returned {len(vectors)} unusable embeddings for {n} "
                                "inputs.", kind="upstream_error", code="upstream_error")
        return vectors

    async def aclose(self) -> None:
        await self._client.aclose()


def quiet_tokenizers() -> None:
    """One thread pool on two cores is enough: the tokenizer's own threads only fight torch's."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
