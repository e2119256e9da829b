"""The 'xla' backend: the reference formulation, what GPUs and TPUs run.

Convolutions are `lax.conv_general_dilated` (depthwise ones with `feature_group_count` = channels), BatchNorm
is the textbook formula, and gradients are JAX's autodiff of both: no custom VJPs, conditionals or
optimisation barriers.

Layouts: activations NHWC, kernels HWIO.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from mv2jax.models.activations import apply_act

# The fused inference network: the whole batch at once, the compiler's defaults.
INFERENCE_BATCH_CHUNK = 0
INFERENCE_COMPILER_OPTIONS = None


def conv2d(x: jax.Array, w: jax.Array, stride: int, padding: int, groups: int) -> jax.Array:
    """NHWC `x` convolved with HWIO `w`, symmetric zero `padding`, `groups` feature groups."""
    return jax.lax.conv_general_dilated(
        x,
        w,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def batch_norm_train(
    xg: jax.Array, weight: jax.Array, bias: jax.Array, eps: float, act: str | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Train-mode BatchNorm (+ activation) with statistics per group.

    xg: `[G, n, H, W, C]` (G groups of n examples); weight, bias: `[C]`. Returns (y like xg, mean `[G, C]`,
    biased variance `[G, C]`); the statistics are for the running averages, outside the gradient.
    """
    mean = jnp.mean(xg, axis=(1, 2, 3), keepdims=True)
    var = jnp.mean(jnp.square(xg - mean), axis=(1, 2, 3), keepdims=True)
    y = apply_act((xg - mean) * jax.lax.rsqrt(var + eps) * weight + bias, act)
    stats = jax.lax.stop_gradient((mean[:, 0, 0, 0], var[:, 0, 0, 0]))
    return y, *stats


def folded_conv(x: jax.Array, p: dict, spec, conv: Callable = conv2d) -> jax.Array:
    """One BatchNorm-folded convolution (`p`: HWIO `weight`, `bias`; `spec`: a ConvSpec) and its activation,
    the convolution computed by `conv` (this backend's `conv2d` unless given)."""
    w, b = p["weight"].astype(x.dtype), p["bias"].astype(x.dtype)
    groups = x.shape[-1] if spec.depthwise else 1
    return apply_act(conv(x, w, spec.stride, spec.padding, groups) + b, spec.act)


def folded_block(x: jax.Array, params: list[dict], convs: tuple, layer: Callable = folded_conv) -> jax.Array:
    """A block's folded convolutions in order, each by `layer` (its residual is added by the caller)."""
    for spec, p in zip(convs, params, strict=True):
        x = layer(x, p, spec)
    return x
