"""The numpy forward pass (fused, blocked, threaded) against the plain forward it replaces."""

from __future__ import annotations

import numpy as np
import pytest

from matryoshka_adaptor.errors import InputError
from matryoshka_adaptor.inference import BLOCK_ROWS, NumpyAdaptor


def random_weights(d: int, hidden: int, depth: int, rotation: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = [d] + [hidden] * (depth - 1) + [d]
    w = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w[f"layers.{i}.weight"] = (rng.standard_normal((b, a)) / np.sqrt(a)).astype(np.float32)  # torch (out, in)
        w[f"layers.{i}.bias"] = (0.1 * rng.standard_normal(b)).astype(np.float32)
    if rotation:
        w["rotation"] = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
    return w


def plain_forward(weights: dict[str, np.ndarray], x: np.ndarray, dim: int) -> np.ndarray:
    """The adaptor as written (normalise, rotate, residual MLP, cut, normalise), in float64."""
    z = x.astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    if "rotation" in weights:
        z = z @ weights["rotation"].astype(np.float64)
    h = z
    depth = sum(k.endswith(".weight") for k in weights)
    for i in range(depth):
        h = h @ weights[f"layers.{i}.weight"].T.astype(np.float64) + weights[f"layers.{i}.bias"]
        if i < depth - 1:
            h = np.maximum(h, 0.0)
    out = (z + h)[:, :dim]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.mark.parametrize("depth,rotation", [(1, True), (2, True), (2, False), (3, True)])
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_matches_plain_forward(depth, rotation, n_threads):
    d, hidden = 48, 40
    w = random_weights(d, hidden, depth, rotation)
    # Not a multiple of the block size, so the last block is short; scaled rows (norms far from 1).
    x = np.random.default_rng(1).standard_normal((2 * BLOCK_ROWS + 37, d)).astype(np.float32) * 7.0
    adaptor = NumpyAdaptor(w, n_threads=n_threads)
    for dim in (8, d):
        got = adaptor.apply(x, dim)
        assert got.dtype == np.float32 and got.shape == (len(x), dim)
        np.testing.assert_allclose(got, plain_forward(w, x, dim), atol=1e-5)


def test_chunked_equals_whole_and_torch_module():
    torch = pytest.importorskip("torch")
    from matryoshka_adaptor.nn.module import AdaptorNet

    d = 32
    w = random_weights(d, d, 2, True, seed=3)
    x = np.random.default_rng(2).standard_normal((1500, d)).astype(np.float32)
    adaptor = NumpyAdaptor(w)
    whole = adaptor.apply(x, 16)
    np.testing.assert_allclose(adaptor.apply_chunked(x, 16, chunk_rows=333), whole, atol=1e-6)
    net = AdaptorNet(d, d, 2, torch.from_numpy(w["rotation"]))
    net.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()})
    with torch.no_grad():
        ref = torch.nn.functional.normalize(net(torch.from_numpy(x))[0][:, :16], dim=-1).numpy()
    np.testing.assert_allclose(whole, ref, atol=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 0.0])
def test_bad_row_is_reported_with_its_file_position(bad):
    d = 16
    x = np.random.default_rng(0).standard_normal((3 * BLOCK_ROWS, d)).astype(np.float32)
    row = 2 * BLOCK_ROWS + 5  # inside a block that a worker thread other than the first runs
    x[row] = bad if bad != 0.0 else 0.0
    with pytest.raises(InputError, match=f"row {row + 100}"):
        NumpyAdaptor(random_weights(d, d, 2, True), n_threads=2).apply(x, 8, offset=100)
