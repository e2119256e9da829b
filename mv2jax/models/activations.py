"""The network's activation, by name: one parameter (`act`) rather than ReLU6 spelled out in every layer;
`None` means no activation."""

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
