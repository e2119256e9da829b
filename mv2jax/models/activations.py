"""The network's activation, by name: one parameter (`act`) rather than ReLU6 spelled out in every layer.

Each activation here is piecewise linear, so its derivative is a mask of where its slope is 1; the 'cpu'
backend's hand-written BatchNorm backward uses that mask (`slope_one`). `None` means no activation.
"""

from __future__ import annotations

import jax

ACTIVATIONS = {"relu6": jax.nn.relu6, "relu": jax.nn.relu}
DEFAULT_ACT = "relu6"  # timm's MobileNetV2 act_layer


def check_act(act: str | None) -> str | None:
    if act is not None and act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}: use one of {', '.join(ACTIVATIONS)} or None")
    return act


def apply_act(x: jax.Array, act: str | None) -> jax.Array:
    return x if act is None else ACTIVATIONS[act](x)


def slope_one(z: jax.Array, act: str) -> jax.Array:
    """Where `act` has slope 1 at its input `z` (0 elsewhere, boundaries included, as PyTorch's backward)."""
    if act == "relu6":
        return (z > 0.0) & (z < 6.0)
    if act == "relu":
        return z > 0.0
    raise ValueError(f"no derivative mask for activation {act!r}")
