import numpy as np
import torch

from matryoshka_adaptor.nn.module import AdaptorNet


def test_zero_initialised_adaptor_is_identity():
    x = torch.nn.functional.normalize(torch.randn(10, 16), dim=-1)
    adapted, z = AdaptorNet(16, 32, depth=3)(x)
    assert torch.equal(adapted, z)
    assert torch.allclose(adapted, x, atol=1e-7)


def test_rotation_keeps_full_dim_cosines():
    rot = torch.linalg.qr(torch.randn(16, 16))[0]
    x = torch.nn.functional.normalize(torch.randn(10, 16), dim=-1)
    adapted, _ = AdaptorNet(16, 16, rotation=rot)(x)
    assert torch.allclose(adapted @ adapted.T, x @ x.T, atol=1e-5)


def test_exported_weights_follow_the_naming_contract():
    import torch

    from matryoshka_adaptor.weight_names import count_layers, expected_names

    for depth in (1, 2, 3):
        for rotation, learn in ((None, False), (torch.eye(6), False), (None, True)):
            net = AdaptorNet(6, 4, depth, rotation, learn_rotation=learn)
            names = set(net.export_weights())
            assert names == expected_names(depth, rotation is not None or learn)
            assert count_layers(names) == depth
        partial = AdaptorNet(6, 4, depth, torch.eye(6), learn_rotation=True, rotation_dims=3)
        assert set(partial.export_weights()) == expected_names(depth, True)


def test_rotation_learned_in_a_leading_subspace_stays_orthogonal_and_exports_one_matrix():
    torch.manual_seed(0)
    start = torch.linalg.qr(torch.randn(24, 24))[0]
    net = AdaptorNet(24, 8, rotation=start, learn_rotation=True, rotation_dims=6)
    assert sum(p.numel() for n, p in net.named_parameters() if n.startswith("rot.")) == 36  # 6 x 6, not 24 x 24
    with torch.no_grad():  # move the learned block away from the identity
        for p in net.rot.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.nn.functional.normalize(torch.randn(10, 24), dim=-1)
    z = net.rotate(x)
    assert torch.allclose(z @ z.T, x @ x.T, atol=1e-5)  # still orthogonal: full-dim cosines unchanged
    assert torch.allclose(z[:, 6:], x @ start[:, 6:], atol=1e-6)  # coordinates past the block are the start's
    w = net.export_weights()
    assert torch.allclose(x @ w["rotation"], z, atol=1e-5)
    fixed = AdaptorNet(24, 8, rotation=w["rotation"])
    fixed.load_state_dict(w)
    assert torch.allclose(fixed(x)[0], net(x)[0], atol=1e-5)


def test_cayley_rotation_gradient_matches_finite_differences():
    from matryoshka_adaptor.nn.module import CayleyRotation, _Cayley

    torch.manual_seed(0)
    target = torch.randn(5, 5, dtype=torch.float64)

    def loss(x):
        upper = x.triu(1)
        return (_Cayley.apply(upper - upper.T) * target).sum()

    assert torch.autograd.gradcheck(loss, (0.3 * torch.randn(5, 5, dtype=torch.float64, requires_grad=True),))
    rot = CayleyRotation(5)
    with torch.no_grad():
        rot.skew.normal_(0, 0.3)
    q = rot.matrix().detach()
    assert torch.allclose(q.T @ q, torch.eye(5), atol=1e-5)


def test_residual_in_a_leading_block_leaves_the_rest_and_exports_as_a_full_padded_net():
    torch.manual_seed(0)
    start = torch.linalg.qr(torch.randn(20, 20))[0]
    for depth in (1, 2):
        net = AdaptorNet(20, 7, depth, rotation=start, learn_rotation=True, rotation_dims=5, residual_dims=8)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.2 * torch.randn_like(p))
        x = torch.nn.functional.normalize(torch.randn(12, 20), dim=-1)
        adapted, z = net(x)
        assert torch.equal(adapted[:, 8:], z[:, 8:])  # coordinates past the block pass through
        assert not torch.allclose(adapted[:, :8], z[:, :8])
        w = net.export_weights()
        assert w["layers.0.weight"].shape[1] == 20 and w[f"layers.{depth - 1}.weight"].shape[0] == 20
        full = AdaptorNet(20, 7, depth, rotation=w["rotation"])  # what a saved adaptor loads into
        full.load_state_dict(w)
        assert torch.allclose(full(x)[0], adapted, atol=1e-5)


def test_prerotated_inputs_give_the_same_adaptor_as_rotating_inside():
    torch.manual_seed(0)
    start = torch.linalg.qr(torch.randn(16, 16))[0]
    inside = AdaptorNet(16, 6, rotation=start, learn_rotation=True, rotation_dims=4, residual_dims=8)
    with torch.no_grad():
        for p in inside.parameters():
            p.add_(0.2 * torch.randn_like(p))
    once = AdaptorNet(16, 6, rotation=start, learn_rotation=True, rotation_dims=4, residual_dims=8, prerotated=True)
    once.load_state_dict(inside.state_dict())
    x = torch.nn.functional.normalize(torch.randn(9, 16), dim=-1)
    assert torch.allclose(once(x @ start)[0], inside(x)[0], atol=1e-5)
    for name, value in inside.export_weights().items():  # the saved rotation still includes the start
        assert torch.allclose(once.export_weights()[name], value, atol=1e-6)
