import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("MA_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture
def data_dir() -> Path:
    path = shared_data_dir()
    if not (path / "scifact" / "embeddings" / "all-MiniLM-L6-v2" / "corpus.npy").is_file():
        pytest.skip(f"real BEIR data not found at {path}; set MA_DATA_DIR to the folder holding scifact/ and nfcorpus/")
    return path


def clustered(n: int = 400, d: int = 32, latent: int = 6, clusters: int = 12, seed: int = 0) -> np.ndarray:
    """Unit vectors with a known low-dimensional structure hidden in the *last* coordinates.

    Cluster centres live in a ``latent``-dim subspace that a random rotation spreads
    over all d coordinates, weighted toward the tail, so plain truncation of the
    first dims loses most of it while a learned map can recover it.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, latent)) * 3
    z = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, latent))
    basis = np.linalg.qr(rng.standard_normal((d, latent)))[0]
    tail_weight = np.linspace(0.1, 1.0, d)[:, None]  # structure lives mostly in later coordinates
    x = z @ (basis * tail_weight).T + 0.05 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def corpus() -> np.ndarray:
    return clustered()
