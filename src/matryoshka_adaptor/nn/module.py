"""The adaptor network: e' = z + f(z), z = x @ R (R orthogonal, identity by default)."""

from __future__ import annotations

import torch
from torch import nn


class AdaptorNet(nn.Module):
    """Residual MLP over (optionally rotated) unit-length embeddings.

    The last layer starts at zero, so an untrained adaptor returns its input
    (after the fixed rotation, which keeps every full-dimension cosine unchanged).
    """

    def __init__(self, input_dim: int, hidden_dim: int, depth: int = 2, rotation: torch.Tensor | None = None):
        super().__init__()
        if depth < 1:
            raise ValueError("depth must be >= 1 (1 = a single linear residual layer)")
        self.input_dim = input_dim
        if rotation is not None:
            self.register_buffer("rotation", rotation.to(torch.float32).contiguous())
        else:
            self.rotation = None
        sizes = [input_dim] + [hidden_dim] * (depth - 1) + [input_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-normalise, then rotate: the space in which e' is compared with e."""
        x = torch.nn.functional.normalize(x, dim=-1)
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
