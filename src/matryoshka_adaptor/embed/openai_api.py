"""Embeddings from any OpenAI-compatible ``/v1/embeddings`` endpoint, paid for once.

* Texts are batched by count and by an estimate of their tokens, and at most
  ``concurrency`` requests are in flight.
* 429, 5xx, timeouts and dropped connections are retried with exponential backoff and
  full jitter; a ``Retry-After`` header, when the server sends one, sets the wait.
  Any other 4xx fails at once with the server's message: retrying cannot fix it.
* Every batch received is committed to the SQLite cache (keyed by provider, model,
  dimensions and text hash) before it counts as done, so a crash or Ctrl-C never pays
  for the same text twice and a rerun continues where the last one stopped.

The API key is read from the environment and sent only in the ``Authorization`` header;
it never appears in an error message.
"""

from __future__ import annotations

import email.utils
import os
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError, UpstreamError
from .cache import EmbeddingCache, text_hash

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass
class EmbedStats:
    """What an ``encode`` call cost: API calls, retries, texts served from the cache."""

    texts: int = 0
    unique: int = 0
    cached: int = 0
    embedded: int = 0
    calls: int = 0
    retries: int = 0
    waited_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, calls: int = 0, retries: int = 0, waited_s: float = 0.0) -> None:
        with self._lock:
            self.calls += calls
            self.retries += retries
            self.waited_s += waited_s

    def summary(self) -> str:
        return (f"{self.texts} texts ({self.unique} unique): {self.cached} from cache, {self.embedded} embedded "
                f"in {self.calls} API calls, {self.retries} retries ({self.waited_s:.1f} s waiting)")


def approx_tokens(text: str) -> int:
    """A conservative token estimate (about 3 bytes a token for BPE tokenisers on English)."""
    return max(1, len(text.encode("utf-8")) // 3)


def make_batches(texts: list[str], max_count: int, max_tokens: int) -> list[list[int]]:
    """Indices of ``texts`` grouped so each group has at most ``max_count`` texts and ``max_tokens`` tokens."""
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_tokens = 0
    for i, t in enumerate(texts):
        n = approx_tokens(t)
        if cur and (len(cur) >= max_count or cur_tokens + n > max_tokens):
            batches.append(cur)
            cur, cur_tokens = [], 0
        cur.append(i)
        cur_tokens += n
    if cur:
        batches.append(cur)
    return batches


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_message(response) -> str:
    try:
        body = response.json()
        err = body.get("error", body) if isinstance(body, dict) else body
        msg = err.get("message") if isinstance(err, dict) else None
        return str(msg or err)[:500]
    except ValueError:
        return response.text[:500]


class OpenAICompatibleSource:
    """Encode texts through an OpenAI-compatible embeddings endpoint, with retries and a crash-safe cache.

    ``api_key`` wins over ``api_key_env`` (default ``OPENAI_API_KEY``); a local server
    that needs no key works without either.
    """

    provider = "openai"

    def __init__(self, model: str, *, base_url: str = "https://api.openai.com/v1", api_key: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", dimensions: int | None = None, batch_size: int = 256,
                 max_batch_tokens: int = 100_000, concurrency: int = 4, max_retries: int = 8,
                 backoff_base_s: float = 0.5, backoff_max_s: float = 60.0, timeout_s: float = 60.0,
                 cache_path=None, seed: int = 0, sleep=time.sleep, client=None):
        if batch_size < 1 or concurrency < 1 or max_retries < 0 or max_batch_tokens < 1:
            raise InputError("batch_size, concurrency and max_batch_tokens must be >= 1 and max_retries >= 0.")
        if dimensions is not None and dimensions < 1:
            raise InputError(f"dimensions must be a positive integer, got {dimensions}.")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key if api_key is not None else os.environ.get(api_key_env)
        self.api_key_env = api_key_env
        self.dimensions = dimensions
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.timeout_s = timeout_s
        self.cache_path = cache_path
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._client = client
        self.last_stats = EmbedStats()

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAICompatibleSource(model={self.model!r}, base_url={self.base_url!r}, dimensions={self.dimensions})"

    @property
    def source_key(self) -> str:
        # Not the URL: the same model behind another proxy, region or port gives the same vectors,
        # and a moved endpoint must not pay again for what is cached.
        return f"openai:{self.model}:dim={self.dimensions or 'native'}"

    # ------------------------------------------------------------------ HTTP
    def _http(self):
        if self._client is None:
            import httpx

            self._client = httpx.Client(timeout=self.timeout_s)
        return self._client

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max_s)
        with self._rng_lock:  # full jitter: spreads clients that failed together
            return self._rng.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2**attempt))

    # Provider hooks: the Gemini and Cohere sources (gemini.py, cohere.py) override these four
    # (and ``_headers``, ``source_key``) and reuse the retries, batching and cache below.
    def _endpoint(self) -> str:
        return f"{self.base_url}/embeddings"

    def _request_body(self, texts: list[str]) -> dict:
        body = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        return body

    def _status_hint(self, status: int) -> str:
        if status in (401, 403):
            return f" Check the API key (read from ${self.api_key_env} or --api-key-env)."
        if status == 404:
            return " Check --base-url (it should end in /v1) and --model."
        return ""

    def embed_batch(self, texts: list[str], stats: EmbedStats | None = None) -> np.ndarray:
        """One batch, retried as needed; returns (len(texts), dim) float32 in input order."""
        import httpx

        stats = stats if stats is not None else EmbedStats()
        body = self._request_body(texts)
        url = self._endpoint()
        for attempt in range(self.max_retries + 1):
            retry_after = None
            stats.add(calls=1)
            try:
                response = self._http().post(url, json=body, headers=self._headers())
            except httpx.TransportError as exc:  # timeout, refused, reset: worth another try
                status, message = None, f"no answer from {url}: {type(exc).__name__}: {self._redact(str(exc))}"
            else:
                if response.status_code == 200:
                    return self._parse(response, len(texts))
                status = response.status_code
                message = f"{url} returned HTTP {status}: {self._redact(_error_message(response))}"
                if status not in RETRY_STATUSES and status < 500:
                    raise UpstreamError(status, message + self._status_hint(status))
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            if attempt == self.max_retries:
                raise UpstreamError(status, f"{message} (gave up after {self.max_retries} retries)")
            delay = self._backoff(attempt, retry_after)
            stats.add(retries=1, waited_s=delay)
            self._sleep(delay)
        raise AssertionError("unreachable")

    def _parse(self, response, n: int) -> np.ndarray:
        try:
            data = sorted(response.json()["data"], key=lambda item: item["index"])
            vectors = np.asarray([item["embedding"] for item in data], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamError(200, f"{self.base_url} answered 200 with a body that is not an embeddings "
                                     f"response ({type(exc).__name__}: {exc}).") from exc
        if vectors.ndim != 2 or len(vectors) != n:
            raise UpstreamError(200, f"{self.base_url} returned {len(vectors)} embeddings for {n} inputs.")
        if not np.isfinite(vectors).all():
            raise UpstreamError(200, f"{self.base_url} returned non-finite values in an embedding.")
        return vectors

    # ------------------------------------------------------------ public API
    def encode(self, texts: list[str], *, desc: str = "embedding", progress: bool = True) -> np.ndarray:
        """Vectors for ``texts`` in order: cached ones are read, the rest fetched and cached batch by batch."""
        if not texts:
            raise InputError("no texts to embed: the input is empty.")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if bad:
            raise InputError(f"{len(bad)} input texts are empty or not strings (first at position {bad[0]}); "
                             "embedding APIs reject empty input, so drop or fill them first.")
        stats = EmbedStats(texts=len(texts))
        self.last_stats = stats
        hashes = [text_hash(t) for t in texts]
        text_of = dict(zip(hashes, texts))
        stats.unique = len(text_of)
        cache = EmbeddingCache(self.cache_path) if self.cache_path else None
        try:
            have = cache.get_many(self.source_key, hashes) if cache else {}
            stats.cached = len(have)
            todo = [h for h in text_of if h not in have]
            batches = [[todo[i] for i in b] for b in
                       make_batches([text_of[h] for h in todo], self.batch_size, self.max_batch_tokens)]
            bar = tqdm(total=len(todo), desc=desc, unit="text", disable=not progress or not todo)
            pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="embed")
            pending: dict[Future, list[str]] = {}
            try:
                queue = iter(batches)
                while True:
                    while len(pending) < self.concurrency:  # bounded in flight, and in memory
                        batch = next(queue, None)
                        if batch is None:
                            break
                        pending[pool.submit(self.embed_batch, [text_of[h] for h in batch], stats)] = batch
                    if not pending:
                        break
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        batch = pending.pop(fut)
                        vectors = fut.result()  # raises UpstreamError: earlier batches are already cached
                        if cache:
                            cache.put_many(self.source_key, batch, vectors)  # committed before counted
                        have.update(zip(batch, vectors))
                        stats.embedded += len(batch)
                        bar.update(len(batch))
            finally:
                # On an error or Ctrl-C: let requests already sent finish and keep what they bought.
                pool.shutdown(wait=True, cancel_futures=True)
                for fut, batch in pending.items():
                    if cache and fut.done() and not fut.cancelled() and fut.exception() is None:
                        cache.put_many(self.source_key, batch, fut.result())
                bar.close()
        finally:
            if cache:
                cache.close()
        dims = {v.shape[0] for v in have.values()}
        if len(dims) != 1:
            raise UpstreamError(200, f"the endpoint returned vectors of different lengths {sorted(dims)}; "
                                     "was the cache filled with another `dimensions`?")
        return np.stack([have[h] for h in hashes]).astype(np.float32)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
