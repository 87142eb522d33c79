"""Where the package keeps files between runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache folder: ``$MA_CACHE_DIR``, else ``~/.cache/matryoshka-adaptor`` (read at each call)."""
    return Path(os.environ.get("MA_CACHE_DIR", Path.home() / ".cache" / "matryoshka-adaptor"))
