"""Each loss against a slow reference written straight from the paper's formulas (loops over i, j, m)."""

import math

import numpy as np
import pytest
import torch

from matryoshka_adaptor.nn import losses

DIMS = (2, 5, 8, 12)


def cos_m(a, b, m):
    a, b = a[:m], b[:m]
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def full_cos(a, b):
    return cos_m(a, b, len(a))


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_prefix_cosine_matrix_matches_loops(rng):
    a, b = rng.standard_normal((5, 12)), rng.standard_normal((4, 12))
    got = losses.prefix_cosine_matrix(torch.tensor(a), torch.tensor(b), DIMS).numpy()
    for t, m in enumerate(DIMS):
        for i in range(5):
            for j in range(4):
                assert got[t, i, j] == pytest.approx(cos_m(a[i], b[j], m), abs=1e-10)


def test_topk_similarity_loss(rng):
    n, k, d = 6, 3, 12
    orig = rng.standard_normal((n, d))
    adapted = orig + 0.3 * rng.standard_normal((n, d))
    nb = np.array([[(i + j + 1) % n for j in range(k)] for i in range(n)])
    target = np.array([[full_cos(orig[i], orig[j]) for j in nb[i]] for i in range(n)])
    ref = np.mean([abs(cos_m(adapted[i], adapted[j], m) - full_cos(orig[i], orig[j]))
                   for m in DIMS for i in range(n) for j in nb[i]])
    got = losses.topk_similarity_loss(torch.tensor(adapted), torch.tensor(adapted[nb]), torch.tensor(target), DIMS)
    assert got.item() == pytest.approx(ref, rel=1e-10)


def test_pairwise_similarity_loss(rng):
    n, d = 7, 12
    orig = rng.standard_normal((n, d))
    adapted = orig + 0.3 * rng.standard_normal((n, d))
    target = np.array([[full_cos(orig[i], orig[j]) for j in range(n)] for i in range(n)])
    ref = np.mean([abs(cos_m(adapted[i], adapted[j], m) - target[i, j])
                   for m in DIMS for i in range(n) for j in range(n) if i != j])
    got = losses.pairwise_similarity_loss(torch.tensor(adapted), torch.tensor(target), DIMS)
    assert got.item() == pytest.approx(ref, rel=1e-10)


def test_reconstruction_loss(rng):
    a, b = rng.standard_normal((4, 12)), rng.standard_normal((4, 12))
    ref = np.mean([abs(a[i, t] - b[i, t]) for i in range(4) for t in range(12)])
    assert losses.reconstruction_loss(torch.tensor(a), torch.tensor(b)).item() == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_ranking_loss(rng, scale):
    nq, nd, d = 4, 6, 12
    q, docs = rng.standard_normal((nq, d)), rng.standard_normal((nd, d))
    grades = rng.integers(0, 3, size=(nq, nd)).astype(float)
    grades[0] = 0  # a query with no positives contributes no pairs
    num, den = 0.0, 0.0
    for i in range(nq):
        for j in range(nd):
            for k in range(nd):
                if grades[i, j] > grades[i, k]:
                    w = grades[i, j] - grades[i, k]
                    den += w * len(DIMS)
                    for m in DIMS:
                        num += w * math.log1p(math.exp(scale * (cos_m(q[i], docs[k], m) - cos_m(q[i], docs[j], m))))
    got = losses.ranking_loss(torch.tensor(q), torch.tensor(docs), torch.tensor(grades), DIMS, scale=scale)
    assert got.item() == pytest.approx(num / den, rel=1e-9)


def test_ranking_loss_positive_mask_limits_j_side_only(rng):
    nq, nd, d = 3, 7, 12
    q, docs = rng.standard_normal((nq, d)), rng.standard_normal((nd, d))
    grades = rng.integers(0, 3, size=(nq, nd)).astype(float)
    as_j = rng.random((nq, nd)) < 0.5
    num, den = 0.0, 0.0
    for i in range(nq):
        for j in range(nd):
            if not as_j[i, j]:
                continue
            for k in range(nd):  # k keeps every doc with its true grade, masked or not
                if grades[i, j] > grades[i, k]:
                    w = grades[i, j] - grades[i, k]
                    den += w * len(DIMS)
                    for m in DIMS:
                        num += w * math.log1p(math.exp(cos_m(q[i], docs[k], m) - cos_m(q[i], docs[j], m)))
    got = losses.ranking_loss(torch.tensor(q), torch.tensor(docs), torch.tensor(grades), DIMS,
                              positive_mask=torch.tensor(as_j))
    assert got.item() == pytest.approx(num / den, rel=1e-9)


def test_ranking_loss_dim_weights_weight_each_dims_share(rng):
    nq, nd, d = 3, 6, 12
    q, docs = torch.tensor(rng.standard_normal((nq, d))), torch.tensor(rng.standard_normal((nd, d)))
    grades = torch.tensor(rng.integers(0, 3, size=(nq, nd)).astype(float))
    w = losses.inverse_sqrt_dim_weights(DIMS)
    assert np.mean(w) == pytest.approx(1.0) and all(a > b for a, b in zip(w, w[1:]))
    assert w[0] / w[-1] == pytest.approx(math.sqrt(DIMS[-1] / DIMS[0]))
    # the weighted loss is the weighted mean of the one-dim losses (each of which has the same pair weights)
    single = [losses.ranking_loss(q, docs, grades, (m,), scale=5.0).item() for m in DIMS]
    got = losses.ranking_loss(q, docs, grades, DIMS, scale=5.0, dim_weights=w).item()
    assert got == pytest.approx(float(np.dot(w, single)) / len(DIMS), rel=1e-9)
    assert got != pytest.approx(np.mean(single), rel=1e-3)
    ones = losses.ranking_loss(q, docs, grades, DIMS, scale=5.0, dim_weights=[1.0] * len(DIMS)).item()
    assert ones == pytest.approx(losses.ranking_loss(q, docs, grades, DIMS, scale=5.0).item(), rel=1e-12)


def test_ranking_loss_without_pairs_is_zero(rng):
    q, docs = torch.tensor(rng.standard_normal((2, 12))), torch.tensor(rng.standard_normal((3, 12)))
    assert losses.ranking_loss(q, docs, torch.zeros(2, 3), DIMS).item() == 0.0


def test_listwise_distillation_loss(rng):
    n, p, d, temp = 3, 5, 12, 0.1
    anchors, pool = rng.standard_normal((n, d)), rng.standard_normal((p, d))
    target = rng.uniform(-1, 1, size=(n, p))
    mask = np.ones((n, p), bool)
    mask[0, 2] = False
    per_dim = []
    for m in DIMS:
        total = 0.0
        for i in range(n):
            valid = [j for j in range(p) if mask[i, j]]
            t = np.array([target[i, j] / temp for j in valid])
            s = np.array([cos_m(anchors[i], pool[j], m) / temp for j in valid])
            pt = np.exp(t - t.max()) / np.exp(t - t.max()).sum()
            ps = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
            total += float(np.sum(pt * (np.log(pt) - np.log(ps))))
        per_dim.append(total / n)
    args = torch.tensor(anchors), torch.tensor(pool), torch.tensor(target), DIMS
    got = losses.listwise_distillation_loss(*args, temperature=temp, mask=torch.tensor(mask))
    assert got.item() == pytest.approx(sum(per_dim) / len(DIMS), rel=1e-9)
    got_per_dim = losses.listwise_distillation_loss(*args, temperature=temp, mask=torch.tensor(mask),
                                                    reduction="per_dim")
    assert got_per_dim.numpy() == pytest.approx(per_dim, rel=1e-9)
    with pytest.raises(ValueError, match="reduction must be"):
        losses.listwise_distillation_loss(*args, reduction="sum")


def test_losses_are_zero_when_adapted_equals_original(rng):
    x = torch.tensor(rng.standard_normal((5, 12)))
    target = losses.prefix_cosine_matrix(x, x, (12,))[0]
    assert losses.pairwise_similarity_loss(x, target, (12,)).item() == pytest.approx(0, abs=1e-12)
    assert losses.reconstruction_loss(x, x).item() == 0.0


# --- gradients: every loss against finite differences (float64), including masked rows --------


def _t(x):
    return torch.tensor(x, dtype=torch.float64, requires_grad=True)


def test_gradcheck_topk_similarity_loss(rng):
    anchors, neighbours = _t(rng.standard_normal((4, 12))), _t(rng.standard_normal((4, 3, 12)))
    target = torch.tensor(rng.uniform(-1, 1, (4, 3)))
    assert torch.autograd.gradcheck(lambda a, b: losses.topk_similarity_loss(a, b, target, DIMS), (anchors, neighbours))


def test_gradcheck_pairwise_similarity_loss(rng):
    target = torch.tensor(rng.uniform(-1, 1, (5, 5)))
    assert torch.autograd.gradcheck(lambda a: losses.pairwise_similarity_loss(a, target, DIMS),
                                    (_t(rng.standard_normal((5, 12))),))


def test_gradcheck_reconstruction_loss(rng):
    assert torch.autograd.gradcheck(losses.reconstruction_loss,
                                    (_t(rng.standard_normal((4, 12))), _t(rng.standard_normal((4, 12)))))


def test_gradcheck_listwise_distillation_loss_with_masked_candidates(rng):
    target = torch.tensor(rng.uniform(-1, 1, (3, 6)))
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, :3] = False  # half of row 0 masked
    mask[2, 5] = False
    fn = lambda a, p: losses.listwise_distillation_loss(a, p, target, DIMS, temperature=0.1, mask=mask)  # noqa: E731
    anchors, pool = _t(rng.standard_normal((3, 12))), _t(rng.standard_normal((6, 12)))
    assert torch.autograd.gradcheck(fn, (anchors, pool))
    # masked candidates get exactly zero gradient (and no NaN) from the anchor that masks them
    valid = torch.zeros(1, 6, dtype=torch.bool)
    valid[0, 4:] = True
    g = torch.autograd.grad(losses.listwise_distillation_loss(anchors[:1], pool, target[:1], DIMS, mask=valid),
                            pool)[0]
    assert torch.all(g[:4] == 0) and torch.any(g[4:] != 0) and torch.isfinite(g).all()


@pytest.mark.parametrize("with_mask", [False, True])
def test_gradcheck_ranking_loss_with_a_query_without_positives(rng, with_mask):
    grades = torch.tensor(rng.integers(0, 3, size=(3, 6)).astype(float))
    grades[1] = 0  # a row with no positive contributes nothing
    mask = torch.tensor(rng.random((3, 6)) < 0.6) if with_mask else None
    fn = lambda q, d: losses.ranking_loss(q, d, grades, DIMS, scale=5.0, positive_mask=mask)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (_t(rng.standard_normal((3, 12))), _t(rng.standard_normal((6, 12)))))
def test_relaxed_sign_forward_is_sign_and_gradient_flows():
    from matryoshka_adaptor.nn.losses import relaxed_sign

    x = torch.randn(5, 16, dtype=torch.float64, requires_grad=True)
    y = relaxed_sign(x)
    assert torch.equal(y.detach(), torch.where(x > 0, 1.0, -1.0).to(x.dtype))
    y.sum().backward()
    soft = torch.tanh(x.detach() * 4 / 0.5)
    torch.testing.assert_close(x.grad, (1 - soft ** 2) * 4 / 0.5)


def test_binary_listwise_loss_gradient_and_hamming_semantics(rng):
    from matryoshka_adaptor.nn.losses import binary_listwise_distillation_loss, prefix_cosine_matrix, relaxed_sign

    a = torch.tensor(rng.standard_normal((4, 12)), dtype=torch.float64, requires_grad=True)
    p = torch.tensor(rng.standard_normal((7, 12)), dtype=torch.float64, requires_grad=True)
    target = torch.tensor(rng.uniform(-1, 1, (4, 7)), dtype=torch.float64)
    # the relaxed (non straight-through) version is smooth: check its gradient numerically
    assert torch.autograd.gradcheck(
        lambda a_, p_: binary_listwise_distillation_loss(a_, p_, target, (4, 12), straight_through=False, tau=2.0),
        (a, p))
    # straight-through: prefix cosines are exactly 1 - 2 * hamming / m
    cos = prefix_cosine_matrix(relaxed_sign(a), relaxed_sign(p), (12,))[0].detach()
    ham = ((a.detach()[:, None] > 0) != (p.detach()[None] > 0)).sum(-1)
    torch.testing.assert_close(cos, 1 - 2 * ham.double() / 12)
    loss = binary_listwise_distillation_loss(a, p, target, (4, 12))
    loss.backward()
    assert loss.item() > 0 and a.grad.abs().sum() > 0 and p.grad.abs().sum() > 0
