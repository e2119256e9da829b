"""The 'xla' backend: the reference formulation, what GPUs and TPUs run.

Convolutions are `lax.conv_general_dilated` (depthwise ones with `feature_group_count` = channels), BatchNorm
is the textbook formula, and gradients are JAX's autodiff of both: no custom VJPs, conditionals or
optimisation barriers.

Layouts: activations NHWC, kernels HWIO.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from mv2jax.models.activations import apply_act
from mv2jax.models.backends.base import ConvParams, conv_bias_act
from mv2jax.models.folded import ConvSpec, FusedBlock


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
    xg: jax.Array, weight: jax.Array, bias: jax.Array, shift: jax.Array, eps: float, act: str | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Train-mode BatchNorm (+ activation) with statistics per group.

    xg: `[G, n, H, W, C]` (G groups of n examples); weight, bias, shift: `[C]`. Returns (y like xg, mean `[G, C]`,
    biased variance `[G, C]`); the statistics are for the running averages, outside the gradient.

    The variance is E[d^2] - E[d]^2 with d = x - shift (clamped at 0): both sums read `xg` in one pass, so the
    compiler fuses them into the convolution that produces `xg`; E[(x - mean)^2] needs the mean first, a second
    pass over the activation in the forward and another in the backward. Unshifted (Flax's form), the difference
    cancels catastrophically where a channel's mean is large against its spread, as in a trained network; shifted
    by the running mean, which is close to the batch mean there, it keeps the two-pass form's accuracy. `d` feeds
    only the two sums, and the output is normalised from `xg` and the full mean: with `d` in the output too,
    XLA:TPU's buffer assignment moved more HBM bytes per step, most on v4 (BENCHMARKS.md).
    """
    s = jax.lax.stop_gradient(shift)
    d = xg - s
    mean_d = jnp.mean(d, axis=(1, 2, 3), keepdims=True)
    var = jnp.maximum(jnp.mean(jnp.square(d), axis=(1, 2, 3), keepdims=True) - jnp.square(mean_d), 0.0)
    mean = mean_d + s
    # (x - mean) * (rsqrt * weight): one full-size product, so autodiff keeps one full-size residual, not two
    y = apply_act((xg - mean) * (jax.lax.rsqrt(var + eps) * weight) + bias, act)
    stats = jax.lax.stop_gradient((mean[:, 0, 0, 0], var[:, 0, 0, 0]))
    return y, *stats


def folded_conv(x: jax.Array, p: ConvParams, spec: ConvSpec) -> jax.Array:
    """One BatchNorm-folded convolution (`p`: HWIO `weight`, `bias`) and its activation."""
    return conv_bias_act(conv2d, x, p, spec)


def folded_block(x: jax.Array, params: Sequence[ConvParams], block: FusedBlock) -> jax.Array:
    """A block's folded convolutions in order (its residual is added by the caller)."""
    for spec, p in zip(block.convs, params, strict=True):
        x = folded_conv(x, p, spec)
    return x


def run_batch(forward: Callable[[jax.Array], jax.Array], x: jax.Array, devices: int) -> jax.Array:
    """`forward(x)`: the whole batch at once, on any number of devices."""
    return forward(x)


def loops_over_batch(batch: int, devices: int) -> bool:
    return False


@dataclasses.dataclass(frozen=True)
class XlaBackend:
    """The 'xla' backend as an object of the `Backend` protocol; the folded network compiles with XLA's defaults."""

    name = "xla"
    inference_compiler_options = None
    conv2d = staticmethod(conv2d)
    batch_norm_train = staticmethod(batch_norm_train)
    folded_conv = staticmethod(folded_conv)
    folded_block = staticmethod(folded_block)
    run_batch = staticmethod(run_batch)
    loops_over_batch = staticmethod(loops_over_batch)
