"""Micro-batching with fair sharing: requests that wait together go to the model together.

A model call costs a fixed overhead plus a per-text cost, so concurrent small requests
are far cheaper as one call. Each worker, once free, takes *everything* waiting up to
``max_batch_texts`` / ``max_batch_tokens``; it waits up to ``window_s`` for more only
while the oldest waiting request is younger than the window.

Large requests do not hold the model: every request is cut into chunks of
``chunk_texts`` and a model call takes one chunk from each waiting request in turn
(round robin), so a one-text request sent while a 2,048-text request runs waits for one
model call, not for the whole large request. A request whose client went away
(``submit`` cancelled) is dropped from the queue; at most the call already running for
it is wasted.

When a model call fails, each request in it is run again on its own, so an input that
breaks the model fails only the request that sent it.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import inspect
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def _malloc_trim():
    """glibc's ``malloc_trim`` (hands freed heap pages back to the OS), or None elsewhere."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)


class _Job:
    __slots__ = ("texts", "tokens", "next", "filled", "out", "fut", "cancelled", "arrived", "first_call")

    def __init__(self, texts: list[str], tokens: list[int], fut: asyncio.Future, now: float):
        self.texts, self.tokens, self.fut = texts, tokens, fut
        self.next = 0  # first text not yet given to a model call
        self.filled = 0  # rows received
        self.out: np.ndarray | None = None
        self.cancelled = False
        self.arrived = now
        self.first_call: float | None = None


class BatchStats:
    """What the batcher did: model calls, texts, and how long requests waited for their first call."""

    def __init__(self):
        self.calls = 0
        self.texts = 0
        self.tokens = 0
        self.failed_calls = 0
        self.isolation_reruns = 0
        self.cancelled_texts = 0  # texts never sent to the model because their client went away
        self.window_waits = 0  # times a worker waited for more requests to join
        self.queue_wait_s = 0.0  # summed over requests: arrival to their first model call
        self.requests = 0
        self.call_s = 0.0
        self.trim_s = 0.0

    def as_dict(self) -> dict:
        return {"model_calls": self.calls, "texts_embedded": self.texts, "tokens_embedded": self.tokens,
                "mean_texts_per_call": round(self.texts / self.calls, 2) if self.calls else 0.0,
                "mean_call_ms": round(1000 * self.call_s / self.calls, 2) if self.calls else 0.0,
                "mean_queue_wait_ms": round(1000 * self.queue_wait_s / self.requests, 2) if self.requests else 0.0,
                "window_waits": self.window_waits, "failed_calls": self.failed_calls,
                "isolation_reruns": self.isolation_reruns, "cancelled_texts": self.cancelled_texts,
                "memory_trim_ms": round(1000 * self.trim_s, 1)}


class MicroBatcher:
    """Batch texts from concurrent requests into model calls, fairly.

    Parameters
    ----------
    embed : callable
        ``texts -> (n, d) float32``; a plain function runs on the batcher's own
        thread(s), a coroutine function is awaited (an upstream API).
    max_batch_texts, max_batch_tokens : int
        Per model call.
    chunk_texts : int
        Texts a request gives a model call per round-robin turn.
    window_s : float
        Longest wait for more requests to join a call.
    workers : int
        Model calls in flight.
    trim_memory : bool
        After each call of a plain function, hand the heap pages it freed back to the OS
        (glibc ``malloc_trim``). A model's activations differ in shape from call to call and
        leave freed memory behind in the heap; without this the server's RSS climbs to, and
        stays at, the peak of its largest calls.
    """

    def __init__(self, embed: Callable, *, max_batch_texts: int = 256, max_batch_tokens: int = 4096,
                 chunk_texts: int = 32, window_s: float = 0.002, workers: int = 1,
                 trim_memory: bool = True):
        self.embed = embed
        self.is_async = inspect.iscoroutinefunction(embed)
        self.max_batch_texts = max_batch_texts
        self.max_batch_tokens = max_batch_tokens
        self.chunk_texts = chunk_texts
        self.window_s = window_s
        self.workers = workers
        self._trim = _malloc_trim() if trim_memory else None
        self.stats = BatchStats()
        self._jobs: deque[_Job] = deque()
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._pool: ThreadPoolExecutor | None = None

    @property
    def batches(self) -> int:
        return self.stats.calls

    async def start(self) -> None:
        self._wake = asyncio.Event()
        if not self.is_async:
            # Own thread(s), not the shared pool: one thread keeps one malloc arena and one set of
            # torch thread-local state, instead of a new one on whichever of 40 pool threads runs next.
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="model")
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    async def submit(self, texts: list[str], tokens: list[int]) -> np.ndarray:
        """Rows for ``texts`` in order. Cancelling the caller drops the texts not yet sent to the model."""
        if self._wake is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        loop = asyncio.get_running_loop()
        job = _Job(texts, tokens, loop.create_future(), loop.time())
        self._jobs.append(job)
        self._wake.set()
        try:
            return await job.fut
        except asyncio.CancelledError:  # the caller went away (cancelling it cancelled job.fut too)
            job.cancelled = True
            self.stats.cancelled_texts += len(job.texts) - job.next
            raise

    # ------------------------------------------------------------------ worker
    def _take(self) -> list[tuple[_Job, int, int]]:
        """Round robin over waiting requests: one chunk each per turn, until the call is full."""
        segments: list[tuple[_Job, int, int]] = []
        n_texts = n_tokens = 0
        while self._jobs and n_texts < self.max_batch_texts:
            job = self._jobs.popleft()
            if job.cancelled:
                continue
            start = end = job.next
            limit = min(len(job.texts), start + self.chunk_texts, start + self.max_batch_texts - n_texts)
            while end < limit and (n_texts == 0 and end == start or n_tokens + job.tokens[end] <= self.max_batch_tokens):
                n_tokens += job.tokens[end]
                n_texts += 1
                end += 1
            if end == start:  # the call is full by tokens: this job goes first next time
                self._jobs.appendleft(job)
                break
            job.next = end
            segments.append((job, start, end))
            if end < len(job.texts):
                self._jobs.append(job)
        return segments

    async def _call(self, texts: list[str]) -> np.ndarray:
        if self.is_async:
            return await self.embed(texts)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._call_sync, texts)

    def _call_sync(self, texts: list[str]) -> np.ndarray:
        try:
            return self.embed(texts)
        finally:
            if self._trim is not None:
                t0 = time.perf_counter()
                self._trim(0)
                self.stats.trim_s += time.perf_counter() - t0

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not any(not j.cancelled for j in self._jobs):
                self._jobs.clear()
                self._wake.clear()
                await self._wake.wait()
            # Everything waiting goes now, unless the call is small and its oldest request is new:
            # then wait out the rest of the window for others to join.
            waiting = sum(len(j.texts) - j.next for j in self._jobs if not j.cancelled)
            oldest = min(j.arrived for j in self._jobs if not j.cancelled)
            rest = oldest + self.window_s - loop.time()
            if waiting < self.max_batch_texts and rest > 0:
                self.stats.window_waits += 1
                await asyncio.sleep(rest)
            segments = self._take()
            if not segments:
                continue
            now = loop.time()
            for job, start, _ in segments:
                if job.first_call is None:
                    job.first_call = now
                    self.stats.requests += 1
                    self.stats.queue_wait_s += now - job.arrived
            await self._run(segments)

    async def _run(self, segments: list[tuple[_Job, int, int]]) -> None:
        texts = [t for job, s, e in segments for t in job.texts[s:e]]
        t0 = time.perf_counter()
        try:
            vectors = await self._call(texts)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.failed_calls += 1
            jobs = list(dict.fromkeys(job for job, _, _ in segments))
            if len(jobs) > 1 and _worth_isolating(exc):
                # Rerun each request's share alone: only the one whose input breaks the model fails.
                for job in jobs:
                    self.stats.isolation_reruns += 1
                    await self._run([seg for seg in segments if seg[0] is job])
            else:
                for job in jobs:
                    self._fail(job, exc)
            return
        self.stats.calls += 1
        self.stats.call_s += time.perf_counter() - t0
        self.stats.texts += len(texts)
        self.stats.tokens += sum(sum(job.tokens[s:e]) for job, s, e in segments)
        row = 0
        for job, s, e in segments:
            n = e - s
            if not job.fut.done():
                if job.out is None:
                    job.out = np.empty((len(job.texts), vectors.shape[1]), dtype=np.float32)
                job.out[s:e] = vectors[row : row + n]
                job.filled += n
                if job.filled == len(job.texts):
                    job.fut.set_result(job.out)
            row += n

    def _fail(self, job: _Job, exc: Exception) -> None:
        job.cancelled = True  # its remaining chunks are not worth running
        if not job.fut.done():
            job.fut.set_exception(exc)


def _worth_isolating(exc: Exception) -> bool:
    """Input-caused failures are rerun per request; an upstream that is down or refuses our key is not."""
    status = getattr(exc, "status", None)
    return status is None or status in (400, 413, 422)
