"""The weight-naming contract shared by the torch module, numpy inference and saved files.

An adaptor's weights are a flat mapping of names to arrays: ``layers.{i}.weight`` (out, in) and
``layers.{i}.bias`` (out,) for each linear layer ``i`` of the residual MLP, and, when the adaptor
rotates its input, ``rotation`` (d, d), applied as ``z = x @ rotation``.
"""

from __future__ import annotations

from collections.abc import Iterable

ROTATION = "rotation"
LAYERS = "layers"


def layer_weight(i: int) -> str:
    return f"{LAYERS}.{i}.weight"


def layer_bias(i: int) -> str:
    return f"{LAYERS}.{i}.bias"


def expected_names(depth: int, rotation: bool) -> set[str]:
    """Every name an adaptor with ``depth`` layers (and a rotation when ``rotation``) must have."""
    names = {name for i in range(depth) for name in (layer_weight(i), layer_bias(i))}
    return names | {ROTATION} if rotation else names


def count_layers(names: Iterable[str]) -> int:
    """Number of consecutive layers ``0, 1, ...`` that have a weight in ``names``."""
    names = set(names)
    i = 0
    while layer_weight(i) in names:
        i += 1
    return i
