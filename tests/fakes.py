"""Shared test helpers: a deterministic fake embedding model that records what it embeds."""

import hashlib
import threading

import numpy as np


class FakeModel:
    """Text -> a fixed pseudo-random unit vector (by hash); counts every text it is asked to embed."""

    def __init__(self, dim: int = 16, fail_on: str | None = None):
        self.dim, self.fail_on = dim, fail_on
        self.seen: list[str] = []
        self.calls = 0
        self._lock = threading.Lock()

    def vector(self, text: str) -> np.ndarray:
        seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def __call__(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            self.calls += 1
            if self.fail_on is not None and self.fail_on in texts:
                raise RuntimeError("the fake model fails on purpose")
            self.seen.extend(texts)
        return np.stack([self.vector(t) for t in texts])
