"""The adaptor network: e' = z + f(z), z = x @ R (R orthogonal, identity by default)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..weight_names import LAYERS, ROTATION, count_layers, layer_bias, layer_weight


@contextlib.contextmanager
def _one_thread():
    """Run LAPACK on one thread: a threaded LU on a busy 2-core machine took 120-160 ms for a
    256 x 256 matrix against 1 ms on one thread (its many barriers wait for descheduled peers)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class _Cayley(torch.autograd.Function):
    """C = (I + S)^-1 (I - S) = 2 (I + S)^-1 - I for skew-symmetric S; the backward is two GEMMs."""

    @staticmethod
    def forward(ctx, skew: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(skew.shape[0], dtype=skew.dtype, device=skew.device)
        with _one_thread():
            inverse = torch.linalg.inv(eye + skew)
        ctx.save_for_backward(inverse)
        return 2 * inverse - eye

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (inverse,) = ctx.saved_tensors  # dC = -2 M dS M with M = (I + S)^-1
        return -2 * inverse.T @ grad @ inverse.T


class CayleyRotation(nn.Module):
    """A learned p x p rotation, the Cayley map of a skew-symmetric matrix (the identity at start)."""

    def __init__(self, p: int):
        super().__init__()
        self.skew = nn.Parameter(torch.zeros(p, p))

    def matrix(self) -> torch.Tensor:
        upper = self.skew.triu(1)
        return _Cayley.apply(upper - upper.T)


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
    rotation_dims : int, optional
        With ``learn_rotation``, learn the rotation only in the leading this-many coordinates after
        the fixed start (None: all of them).
    residual_dims : int, optional
        The MLP reads and writes only the leading this-many rotated coordinates; the others pass
        through unchanged (None: all of them). Exported zero-padded to d x hidden / hidden x d, so
        saved adaptors and the numpy path do not change.
    prerotated : bool, default False
        The inputs are already multiplied by the fixed ``rotation`` (a fit rotates its training rows
        once instead of at every step); the exported rotation still includes it.

    Attributes
    ----------
    layers : ModuleList of Linear
        The residual MLP; saved as ``layers.{i}.weight`` / ``layers.{i}.bias``.
    rotation : Tensor or None
        The fixed rotation buffer (saved as ``rotation``), None when learned or absent.
    rot : Linear, CayleyRotation or None
        The learned, orthogonally parametrised rotation (exported as ``rotation``): all of it
        (``rotation`` is None), or its leading ``rotation_dims`` block after the fixed ``rotation``.
    """

    def __init__(self, input_dim: int, hidden_dim: int, depth: int = 2, rotation: torch.Tensor | None = None,
                 learn_rotation: bool = False, rotation_dims: int | None = None,
                 residual_dims: int | None = None, prerotated: bool = False):
        super().__init__()
        if depth < 1:
            raise ValueError("depth must be >= 1 (1 = a single linear residual layer)")
        self.input_dim = input_dim
        self.rot = None
        # Learned part of the rotation: all coordinates, or only the first `rotation_dims` (after the
        # fixed start), where a d x d Cayley solve per step would cost too much (large d).
        self.rotation_dims = input_dim if rotation_dims is None else max(1, min(int(rotation_dims), input_dim))
        partial = learn_rotation and self.rotation_dims < input_dim
        if learn_rotation:
            # A trainable rotation kept exactly orthogonal (so full-dim cosines never change),
            # starting from the given one (e.g. the PCA basis) or the identity.
            from torch.nn.utils.parametrizations import orthogonal

            start = torch.eye(input_dim) if rotation is None else rotation.to(torch.float32)
            p = self.rotation_dims
            if partial:
                # z = x @ start, then its first p coordinates rotated by a learned p x p block.
                self.register_buffer(ROTATION, start.contiguous())
                self.rot = CayleyRotation(p)
            else:
                self.rot = nn.Linear(p, p, bias=False)
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
        self.residual_dims = input_dim if residual_dims is None else max(1, min(int(residual_dims), input_dim))
        self.prerotated = prerotated
        r = self.residual_dims
        sizes = [r] + [hidden_dim] * (depth - 1) + [r]
        # The attribute name is the saved weights' prefix (weight_names.LAYERS).
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    @classmethod
    def from_weights(cls, weights, *, undo_rotation: torch.Tensor | None = None) -> AdaptorNet:
        """A fixed (untrained) net computing exported ``weights`` (numpy or torch, as ``export_weights``).

        ``undo_rotation``: the net will see rows already multiplied by this orthogonal matrix (a fit's
        prerotated training rows), so its fixed rotation is ``undo_rotation.T @ rotation``.
        """
        weights = {k: torch.as_tensor(v) for k, v in weights.items()}
        input_dim, hidden_dim = weights[layer_weight(0)].shape[1], weights[layer_weight(0)].shape[0]
        rotation = weights.get(ROTATION)
        if undo_rotation is not None:
            rotation = undo_rotation.T if rotation is None else undo_rotation.T @ rotation
            weights[ROTATION] = rotation
        net = cls(input_dim, hidden_dim, count_layers(weights), rotation)
        net.load_state_dict(weights)
        return net

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-normalise, then rotate: the space in which e' is compared with e."""
        x = torch.nn.functional.normalize(x, dim=-1)
        if self.rot is not None and self.rotation is None:
            return self.rot(x)
        z = x @ self.rotation if self.rotation is not None and not self.prerotated else x
        if self.rot is not None:
            p = self.rotation_dims
            z = torch.cat([z[:, :p] @ self.rot.matrix(), z[:, p:]], dim=1)
        return z

    def residual(self, z: torch.Tensor) -> torch.Tensor:
        """f(z): the MLP on the leading ``residual_dims`` coordinates, zero on the others."""
        r = self.residual_dims
        h = z[:, :r] if r < self.input_dim else z
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        if r < self.input_dim:
            h = torch.nn.functional.pad(h, (0, self.input_dim - r))
        return h

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (adapted e', rotated input z); the reconstruction loss compares the two."""
        z = self.rotate(x)
        return z + self.residual(z), z

    def export_weights(self) -> dict[str, torch.Tensor]:
        """Plain tensors named as :mod:`matryoshka_adaptor.weight_names` says; a learned rotation is
        stored as the fixed ``rotation`` matrix (a learned leading block folded into the fixed start)."""
        weights = {}
        if self.rot is not None and self.rotation is None:
            weights[ROTATION] = self.rot.weight.detach().T.contiguous().clone()
        elif self.rot is not None:  # fold the learned block into the fixed start: one d x d matrix
            p = self.rotation_dims
            full = self.rotation.detach().clone()
            with torch.no_grad():
                full[:, :p] = self.rotation[:, :p] @ self.rot.matrix()
            weights[ROTATION] = full.contiguous()
        elif self.rotation is not None:
            weights[ROTATION] = self.rotation.detach().clone()
        last = len(self.layers) - 1
        pad = self.input_dim - self.residual_dims  # a partial MLP is saved as a full one with zeros
        for i, layer in enumerate(self.layers):
            w, b = layer.weight.detach().clone(), layer.bias.detach().clone()
            if pad and i == 0:
                w = torch.nn.functional.pad(w, (0, pad))
            if pad and i == last:
                w, b = torch.nn.functional.pad(w, (0, 0, 0, pad)), torch.nn.functional.pad(b, (0, pad))
            weights[layer_weight(i)], weights[layer_bias(i)] = w.contiguous(), b
        return weights


assert LAYERS == "layers"  # the ModuleList attribute above gives state_dict these names
