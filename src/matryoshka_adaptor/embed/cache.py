"""A crash-safe on-disk cache of embedding vectors in SQLite (no pickle).

Key: (source key, sha256 of the text). Each batch is committed as soon as it is
encoded, so an interrupted run resumes where it stopped and never encodes a
text twice. Batches sent but not yet answered are journalled in ``in_flight`` (with
the sender's process id): after a hard kill (``kill -9``) the next run can say how
many texts it has to pay for again.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import InputError


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path))
            self._db.execute("PRAGMA journal_mode=WAL")
            self._create_tables()
        except (OSError, sqlite3.Error) as exc:
            raise InputError(f"cannot use the embedding cache at {self.path} ({exc}); pass --cache with a writable "
                             "file path (or fix the folder's permissions).") from exc

    def _create_tables(self) -> None:
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS vectors (source TEXT NOT NULL, hash TEXT NOT NULL, dim INTEGER NOT NULL, "
            "vector BLOB NOT NULL, PRIMARY KEY (source, hash))"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS in_flight (source TEXT NOT NULL, hash TEXT NOT NULL, pid INTEGER NOT NULL, "
            "PRIMARY KEY (source, hash, pid))"
        )
        self._db.commit()

    def mark_in_flight(self, source: str, hashes: list[str]) -> None:
        """Journal texts about to be sent (cleared when their vectors are stored or the request fails)."""
        with self._db:
            self._db.executemany("INSERT OR IGNORE INTO in_flight (source, hash, pid) VALUES (?, ?, ?)",
                                 [(source, h, os.getpid()) for h in hashes])

    def release_in_flight(self, source: str, hashes: list[str]) -> None:
        with self._db:
            self._db.executemany("DELETE FROM in_flight WHERE source = ? AND hash = ? AND pid = ?",
                                 [(source, h, os.getpid()) for h in hashes])

    def take_lost_in_flight(self, source: str) -> int:
        """Count and clear texts that runs no longer alive sent but never stored (paid, then lost)."""
        from ..atomic import pid_alive

        rows = self._db.execute("SELECT DISTINCT pid FROM in_flight WHERE source = ?", [source]).fetchall()
        dead = [pid for (pid,) in rows if pid != os.getpid() and not pid_alive(pid)]
        lost = 0
        with self._db:
            for pid in dead:
                lost += self._db.execute(
                    "SELECT COUNT(DISTINCT hash) FROM in_flight WHERE source = ? AND pid = ? AND hash NOT IN "
                    "(SELECT hash FROM vectors WHERE source = ?)", [source, pid, source]).fetchone()[0]
                self._db.execute("DELETE FROM in_flight WHERE source = ? AND pid = ?", [source, pid])
        return lost

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
        """Store one batch in one transaction (all of it or none); refuses vectors no one should reuse."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(hashes) or vectors.shape[1] == 0:
            raise InputError(f"the embedding source returned {vectors.shape} vectors for {len(hashes)} texts; "
                             "nothing of this batch was cached.")
        if not np.isfinite(vectors).all() or (np.abs(vectors).max(axis=1) == 0).any():
            raise InputError("the embedding source returned NaN, infinite or all-zero vectors; nothing of this "
                             "batch was cached. Check the model and the texts of this batch.")
        try:
            with self._db:  # one transaction per batch: all of it lands, or none
                self._db.executemany(
                    "INSERT OR REPLACE INTO vectors (source, hash, dim, vector) VALUES (?, ?, ?, ?)",
                    [(source, h, int(v.shape[0]), v.tobytes()) for h, v in zip(hashes, vectors)],
                )
                self._db.executemany("DELETE FROM in_flight WHERE source = ? AND hash = ? AND pid = ?",
                                     [(source, h, os.getpid()) for h in hashes])
        except sqlite3.Error as exc:
            raise InputError(f"cannot write to the embedding cache at {self.path} ({exc}); free disk space or pass "
                             "--cache with another path. Vectors already cached are kept.") from exc

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
