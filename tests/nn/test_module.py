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
