"""Embeddings from any OpenAI-compatible ``/v1/embeddings`` endpoint, paid for once.

* Texts are batched by count and by an estimate of their tokens, and at most
  ``concurrency`` requests are in flight.
* 429, 5xx, timeouts and dropped connections are retried with exponential backoff and
  full jitter; a ``Retry-After`` header, when the server sends one, sets the wait.
  Any other 4xx fails at once with the server's message: retrying cannot fix it.
* Every response is validated before anything from it is cached: one vector per input,
  each index once, the requested ``dimensions`` (and the same length as every other vector
  of the run and of the cache), finite, not all zero. A response that fails is an error;
  nothing of it is stored.
* Every batch received is committed to the SQLite cache (keyed by provider, model,
  dimensions and text hash) before it counts as done, so a crash, Ctrl-C or SIGTERM never
  pays for the same text twice and a rerun continues where the last one stopped. A hard
  kill (``kill -9``, power loss) loses the answers still in flight: at most
  ``max_in_flight_texts`` texts, which the next run embeds again and reports.

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
    lost_in_flight: int = 0  # texts a killed earlier run paid for but never stored
    max_in_flight: int = 0
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
        text = (f"{self.texts} texts ({self.unique} unique): {self.cached} from cache, {self.embedded} embedded "
                f"in {self.calls} API calls, {self.retries} retries ({self.waited_s:.1f} s waiting)")
        if self.cached or self.lost_in_flight:
            text += (f"; resumed: {self.lost_in_flight} texts were in flight when an earlier run was killed and were "
                     f"paid for again (a hard kill can cost at most {self.max_in_flight} texts)")
        return text


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


def error_message(response) -> str:
    """The error text of an HTTP error response (OpenAI's ``{"error": {"message"}}`` shape or the raw body), at most 500 characters."""
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
                 cache_path=None, seed: int = 0, sleep=time.sleep, client=None,
                 max_in_flight_texts: int | None = None):
        if batch_size < 1 or concurrency < 1 or max_retries < 0 or max_batch_tokens < 1:
            raise InputError("batch_size, concurrency and max_batch_tokens must be >= 1 and max_retries >= 0.")
        if dimensions is not None and dimensions < 1:
            raise InputError(f"dimensions must be a positive integer, got {dimensions}.")
        if max_in_flight_texts is not None and max_in_flight_texts < 1:
            raise InputError(f"max_in_flight_texts must be >= 1 (texts sent but not yet cached); got {max_in_flight_texts}.")
        # What a hard kill can cost: texts sent whose answers are not yet cached. Batches are cut to fit it.
        self.max_in_flight_texts = max_in_flight_texts or batch_size * concurrency
        batch_size = min(batch_size, self.max_in_flight_texts)
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
    # (and ``_headers``, ``source_key``) and reuse the retries, batching, validation and cache below.
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

    def _rows(self, body, n: int, refuse) -> list:
        """The response's vectors as lists in input order (``refuse(why)`` makes the error to raise)."""
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise refuse("a body that is not an embeddings response (no 'data' list)")
        if len(data) != n:
            raise refuse(f"{len(data)} embeddings for {n} inputs")
        rows: list = [None] * n
        for item in data:
            index = item.get("index") if isinstance(item, dict) else None
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n or rows[index] is not None:
                raise refuse(f"a missing, repeated or out-of-range index {index!r} for {n} inputs")
            rows[index] = item.get("embedding")
        return rows

    def embed_batch(self, texts: list[str], stats: EmbedStats | None = None, expected_dim: int | None = None) -> np.ndarray:
        """One batch, retried as needed; returns (len(texts), dim) float32 in input order.

        The response is validated (see :meth:`_parse`); ``expected_dim`` is the length every
        vector must have (the requested ``dimensions`` wins; None: any, but one for all).
        """
        import httpx

        stats = stats if stats is not None else EmbedStats()
        body = self._request_body(texts)
        url = self._endpoint()
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
                    return self._parse(response, len(texts), self.dimensions or expected_dim)
                status = response.status_code
                message = f"{url} returned HTTP {status}: {self._redact(error_message(response))}"
                if status not in RETRY_STATUSES and status < 500:
                    raise UpstreamError(status, message + self._status_hint(status))
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            if attempt == self.max_retries:
                raise UpstreamError(status, f"{message} (gave up after {self.max_retries} retries)")
            delay = self._backoff(attempt, retry_after)
            stats.add(retries=1, waited_s=delay)
            self._sleep(delay)
        raise AssertionError("unreachable")

    def _parse(self, response, n: int, expected_dim: int | None = None) -> np.ndarray:
        """The vectors of a 200 response, or :class:`UpstreamError` if it does not answer the request."""
        def refuse(why: str) -> UpstreamError:
            return UpstreamError(200, f"{self.base_url} answered 200 with {why}; nothing from it was cached. "
                                      "Check --base-url, --model and --dimensions.")

        try:
            body = response.json()
        except ValueError as exc:
            raise refuse(f"a body that is not JSON ({exc})") from exc
        rows = self._rows(body, n, refuse)
        if not isinstance(rows, list) or len(rows) != n:
            raise refuse(f"{len(rows) if isinstance(rows, list) else 'no'} embeddings for {n} inputs")
        for index, emb in enumerate(rows):
            if not isinstance(emb, list) or not emb or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in emb):
                raise refuse(f"embedding {index} that is not a non-empty list of numbers")
        lengths = sorted({len(r) for r in rows})
        if len(lengths) != 1:
            raise refuse(f"vectors of different lengths {lengths} in one response")
        if expected_dim is not None and lengths[0] != expected_dim:
            asked = "asked for" if self.dimensions else "expected (from earlier vectors of this model)"
            raise refuse(f"{lengths[0]}-dimensional vectors; {asked} {expected_dim}")
        try:
            with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused just below
                vectors = np.asarray(rows, dtype=np.float32)
        except (OverflowError, ValueError) as exc:
            raise refuse(f"numbers that are not float32 ({exc})") from exc
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            raise refuse(f"NaN, infinite or out-of-range values in embedding {int(np.flatnonzero(~finite)[0])}")
        zero = np.abs(vectors).max(axis=1) == 0
        if zero.any():
            raise refuse(f"an all-zero vector for input {int(np.flatnonzero(zero)[0])} (it has no direction)")
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
        stats.max_in_flight = self.max_in_flight_texts
        try:
            have = self._usable_cached(cache.get_many(self.source_key, hashes)) if cache else {}
            if cache:
                stats.lost_in_flight = cache.take_lost_in_flight(self.source_key)
            stats.cached = len(have)
            # Every vector of a run has one length: the requested one, else that of the cache, else the first answer's.
            expected = {"dim": self.dimensions or (next(iter(have.values())).shape[0] if have else None)}
            todo = [h for h in text_of if h not in have]
            batches = [[todo[i] for i in b] for b in
                       make_batches([text_of[h] for h in todo], self.batch_size, self.max_batch_tokens)]
            bar = tqdm(total=len(todo), desc=desc, unit="text", disable=not progress or not todo)
            pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="embed")
            pending: dict[Future, list[str]] = {}

            def store(batch: list[str], vectors: np.ndarray) -> None:
                if expected["dim"] is None:
                    expected["dim"] = vectors.shape[1]
                elif vectors.shape[1] != expected["dim"]:  # answered before the first answer set the length
                    raise UpstreamError(200, f"{self.base_url} returned {vectors.shape[1]}-dimensional vectors after "
                                             f"{expected['dim']}-dimensional ones; nothing of that batch was cached.")
                if cache:
                    cache.put_many(self.source_key, batch, vectors)  # committed before counted
                have.update(zip(batch, vectors))

            try:
                queue = iter(batches)
                batch = next(queue, None)
                while True:
                    in_flight = sum(len(b) for b in pending.values())
                    # bounded in flight (what a hard kill can cost), and in memory
                    while batch is not None and len(pending) < self.concurrency and (
                            not pending or in_flight + len(batch) <= self.max_in_flight_texts):
                        if cache:
                            cache.mark_in_flight(self.source_key, batch)
                        pending[pool.submit(self.embed_batch, [text_of[h] for h in batch], stats,
                                            expected["dim"])] = batch
                        in_flight += len(batch)
                        batch = next(queue, None)
                    if not pending:
                        break
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        finished = pending.pop(fut)
                        try:
                            vectors = fut.result()  # raises UpstreamError: earlier batches are already cached
                        except BaseException:
                            if cache:
                                cache.release_in_flight(self.source_key, finished)
                            raise
                        store(finished, vectors)
                        stats.embedded += len(finished)
                        bar.update(len(finished))
            finally:
                # On an error, Ctrl-C or SIGTERM: let requests already sent finish and keep what they bought.
                pool.shutdown(wait=True, cancel_futures=True)
                for fut, finished in pending.items():
                    if fut.done() and not fut.cancelled() and fut.exception() is None:
                        try:
                            store(finished, fut.result())
                            continue
                        except UpstreamError:
                            pass
                    if cache:
                        cache.release_in_flight(self.source_key, finished)
                bar.close()
        finally:
            if cache:
                cache.close()
        return np.stack([have[h] for h in hashes]).astype(np.float32)

    def _usable_cached(self, cached: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Cached vectors that can be trusted; others are embedded again (and replaced in the cache).

        Drops non-finite and all-zero vectors, and vectors whose length is not the requested
        ``dimensions`` (or, without it, not the length most cached vectors of this model have):
        older versions could cache such answers, and each rerun then failed without a call.
        """
        good = {h: v for h, v in cached.items() if np.isfinite(v).all() and np.abs(v).max() > 0}
        if not good:
            return good
        lengths = [v.shape[0] for v in good.values()]
        want = self.dimensions or max(set(lengths), key=lengths.count)
        return {h: v for h, v in good.items() if v.shape[0] == want}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
