"""A crash-safe on-disk cache of embedding vectors in SQLite (no pickle).

Key: (source key, sha256 of the text). Each batch is committed as soon as it is
encoded, so an interrupted run resumes where it stopped and never encodes a
text twice.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path))
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS vectors (source TEXT NOT NULL, hash TEXT NOT NULL, dim INTEGER NOT NULL, "
            "vector BLOB NOT NULL, PRIMARY KEY (source, hash))"
        )
        self._db.commit()

    def get_many(self, source: str, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        hashes = list(dict.fromkeys(hashes))
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(hashes), 500):
            chunk = hashes[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT hash, dim, vector FROM vectors WHERE source = ? AND hash IN ({marks})", [source, *chunk]
            )
            for h, dim, blob in rows:
                found[h] = np.frombuffer(blob, dtype=np.float32, count=dim)
        return found

    def put_many(self, source: str, hashes: list[str], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        with self._db:  # one transaction per batch: all of it lands, or none
            self._db.executemany(
                "INSERT OR REPLACE INTO vectors (source, hash, dim, vector) VALUES (?, ?, ?, ?)",
                [(source, h, int(v.shape[0]), v.tobytes()) for h, v in zip(hashes, vectors)],
            )

    def count(self, source: str | None = None) -> int:
        if source is None:
            return self._db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM vectors WHERE source = ?", [source]).fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
