"""The adaptor network: e' = z + f(z), z = x @ R (R orthogonal, identity by default)."""

from __future__ import annotations

import torch
from torch import nn

from ..weight_names import LAYERS, ROTATION, layer_bias, layer_weight


class AdaptorNet(nn.Module):
    """Residual MLP over (optionally rotated) unit-length embeddings.

    The last layer starts at zero, so an untrained adaptor returns its input
    (after the fixed rotation, which keeps every full-dimension cosine unchanged).

    Parameters
    ----------
    input_dim : int
        Dimension d of the embeddings.
    hidden_dim : int
        Width of the hidden layers.
    depth : int, default 2
        Number of linear layers (1: a single linear residual layer).
    rotation : Tensor of shape (d, d), optional
        Orthogonal start rotation (e.g. the PCA basis); None: the identity.
    learn_rotation : bool, default False
        Train the rotation, kept exactly orthogonal (Cayley parametrisation).

    Attributes
    ----------
    layers : ModuleList of Linear
        The residual MLP; saved as ``layers.{i}.weight`` / ``layers.{i}.bias``.
    rotation : Tensor or None
        The fixed rotation buffer (saved as ``rotation``), None when learned or absent.
    rot : Linear or None
        The learned, orthogonally parametrised rotation (exported as ``rotation``).
    """

    def __init__(self, input_dim: int, hidden_dim: int, depth: int = 2, rotation: torch.Tensor | None = None,
                 learn_rotation: bool = False):
        super().__init__()
        if depth < 1:
            raise ValueError("depth must be >= 1 (1 = a single linear residual layer)")
        self.input_dim = input_dim
        self.rot = None
        if learn_rotation:
            # A trainable rotation kept exactly orthogonal (so full-dim cosines never change),
            # starting from the given one (e.g. the PCA basis) or the identity.
            from torch.nn.utils.parametrizations import orthogonal

            start = torch.eye(input_dim) if rotation is None else rotation.to(torch.float32)
            self.rot = nn.Linear(input_dim, input_dim, bias=False)
            with torch.no_grad():
                self.rot.weight.copy_(start.T)
            # Cayley map: much cheaper per step than the default matrix exponential (timings in
            # docs/ablations.md, "Engineering choices").
            orthogonal(self.rot, orthogonal_map="cayley")
            self.rotation = None
        elif rotation is not None:
            self.register_buffer(ROTATION, rotation.to(torch.float32).contiguous())
        else:
            self.rotation = None
        sizes = [input_dim] + [hidden_dim] * (depth - 1) + [input_dim]
        # The attribute name is the saved weights' prefix (weight_names.LAYERS).
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-normalise, then rotate: the space in which e' is compared with e."""
        x = torch.nn.functional.normalize(x, dim=-1)
        if self.rot is not None:
            return self.rot(x)
        return x @ self.rotation if self.rotation is not None else x

    def residual(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return h

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (adapted e', rotated input z); the reconstruction loss compares the two."""
        z = self.rotate(x)
        return z + self.residual(z), z

    def export_weights(self) -> dict[str, torch.Tensor]:
        """Plain tensors named as :mod:`matryoshka_adaptor.weight_names` says; a learned rotation is
        stored as the fixed ``rotation`` matrix."""
        weights = {}
        if self.rot is not None:
            weights[ROTATION] = self.rot.weight.detach().T.contiguous().clone()
        elif self.rotation is not None:
            weights[ROTATION] = self.rotation.detach().clone()
        for i, layer in enumerate(self.layers):
            weights[layer_weight(i)] = layer.weight.detach().clone()
            weights[layer_bias(i)] = layer.bias.detach().clone()
        return weights


assert LAYERS == "layers"  # the ModuleList attribute above gives state_dict these names
