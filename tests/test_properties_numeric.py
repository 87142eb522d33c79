"""Property-based tests (hypothesis): exact top-k against brute force, numpy against torch
forward over random shapes, and dims parsing."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matryoshka_adaptor import InputError
from matryoshka_adaptor.config import AdaptorConfig
from matryoshka_adaptor.inference import NumpyAdaptor
from matryoshka_adaptor.neighbors import exact_topk, torch_topk
from matryoshka_adaptor.nn.module import AdaptorNet

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@FAST
@given(nq=st.integers(1, 30), nc=st.integers(2, 60), d=st.integers(1, 12), k=st.integers(1, 70),
       block_rows=st.integers(1, 16), block_cols=st.integers(1, 40), exclude=st.booleans(), seed=st.integers(0, 2**16))
def test_blockwise_exact_topk_equals_brute_force(nq, nc, d, k, block_rows, block_cols, exclude, seed):
    rng = np.random.default_rng(seed)
    corpus = _unit(rng, nc, d)
    queries = corpus[:nq] if exclude and nq <= nc else _unit(rng, nq, d)
    ex = np.arange(len(queries)) if exclude and nq <= nc else None
    scores = queries @ corpus.T
    if ex is not None:
        scores[np.arange(len(queries)), ex] = -np.inf
    k_eff = min(k, nc - (ex is not None))
    ref = -np.sort(-scores, axis=1)[:, :k_eff]
    for search in (exact_topk, torch_topk):
        res = search(queries, corpus, k, exclude=ex, block_rows=block_rows, block_cols=block_cols)
        assert res.indices.shape == (len(queries), k_eff)
        # Ties may be ordered differently: compare the scores, and that each index has its score.
        np.testing.assert_allclose(res.scores, ref, atol=1e-5)
        np.testing.assert_allclose(np.take_along_axis(scores, res.indices, 1), res.scores, atol=1e-5)
        if ex is not None:
            assert not (res.indices == ex[:, None]).any()


@FAST
@given(n=st.integers(1, 20), d=st.integers(2, 24), hidden=st.integers(1, 24), depth=st.integers(1, 3),
       rotate=st.booleans(), dim_frac=st.floats(0.01, 1.0), seed=st.integers(0, 2**16))
def test_numpy_forward_equals_torch_forward(n, d, hidden, depth, rotate, dim_frac, seed):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rotation = torch.from_numpy(np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)) if rotate else None
    net = AdaptorNet(d, hidden, depth, rotation)
    with torch.no_grad():
        net.layers[-1].weight.normal_(0, 0.5)  # a non-identity map
        net.layers[-1].bias.normal_(0, 0.1)
    x = rng.standard_normal((n, d)).astype(np.float32) * rng.uniform(0.1, 10)
    dim = max(1, int(round(dim_frac * d)))
    with torch.no_grad():
        ref = torch.nn.functional.normalize(net(torch.from_numpy(x))[0][:, :dim], dim=-1).numpy()
    got = NumpyAdaptor({k: v.numpy() for k, v in net.export_weights().items()}).apply(x, dim)
    np.testing.assert_allclose(got, ref, atol=2e-5)


@FAST
@given(st.lists(st.integers(1, 4096), min_size=1, max_size=8))
def test_dims_parse_to_sorted_unique_positive_ints(dims):
    for given_as in (dims, tuple(dims), np.asarray(dims)):
        assert AdaptorConfig(dims=given_as).dims == tuple(sorted(set(dims)))


@FAST
@given(st.one_of(
    st.text(min_size=1, max_size=6),
    st.booleans(),
    st.lists(st.floats(allow_nan=True).filter(lambda f: not float(f).is_integer()), min_size=1, max_size=4),
    st.lists(st.integers(max_value=0), min_size=1, max_size=4),
    st.just([]),
))
def test_dims_that_are_not_positive_ints_are_refused(bad):
    with pytest.raises(InputError, match=r"^dims=.* is not valid: dims must be positive integers"):
        AdaptorConfig(dims=bad)
