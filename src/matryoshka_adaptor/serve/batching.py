"""Micro-batching: requests that arrive together go to the model as one batch.

A model call costs a fixed overhead plus a per-text cost, so ten concurrent
one-text requests are far cheaper as one ten-text call. Each worker takes the
first waiting request, gathers whatever else arrives within ``window_s`` (up to
``max_texts``), runs the embedding function in a thread, and hands every
request its own rows back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
from starlette.concurrency import run_in_threadpool


class MicroBatcher:
    def __init__(self, embed: Callable[[list[str]], np.ndarray], *, max_texts: int = 256, window_s: float = 0.002,
                 workers: int = 1):
        self.embed = embed
        self.max_texts = max_texts
        self.window_s = window_s
        self.workers = workers
        self._queue: asyncio.Queue | None = None
        self._tasks: list[asyncio.Task] = []
        self.batches = 0  # model calls made, for /health and the load report

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def submit(self, texts: list[str]) -> np.ndarray:
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((texts, fut))
        return await fut

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            n = len(items[0][0])
            deadline = loop.time() + self.window_s
            while n < self.max_texts:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                items.append(item)
                n += len(item[0])
            items = [it for it in items if not it[1].done()]  # clients that gave up
            if not items:
                continue
            texts = [t for it in items for t in it[0]]
            try:
                vectors = await run_in_threadpool(self.embed, texts)
                self.batches += 1
            except Exception as exc:  # every request in the batch gets the same error
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            start = 0
            for its_texts, fut in items:
                if not fut.done():
                    fut.set_result(vectors[start : start + len(its_texts)])
                start += len(its_texts)
