"""The backend interface: what every backend provides, with one signature per function.

Layouts: activations NHWC, kernels HWIO; a folded convolution's parameters are `{'weight': HWIO, 'bias': [C_out]}`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax

from mv2jax.models.activations import apply_act
from mv2jax.models.folded import ConvSpec, FusedBlock

ConvParams = Mapping[str, jax.Array]
Conv2dFn = Callable[[jax.Array, jax.Array, int, int, int], jax.Array]


class Backend(Protocol):
    """Convolutions and BatchNorm+activation, forward and backward, and how the folded network runs a batch."""

    @property
    def name(self) -> str:
        """The backend's `conv_impl` name."""
        ...

    @property
    def inference_compiler_options(self) -> Mapping[str, Any] | None:
        """XLA options the folded network compiles with (None: the compiler's defaults)."""
        ...

    def conv2d(self, x: jax.Array, w: jax.Array, stride: int, padding: int, groups: int) -> jax.Array:
        """NHWC `x` convolved with HWIO `w`, symmetric zero `padding`, `groups` feature groups."""
        ...

    def batch_norm_train(
        self, xg: jax.Array, weight: jax.Array, bias: jax.Array, shift: jax.Array, eps: float, act: str | None
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Train-mode BatchNorm (+ activation) with statistics per group. xg: `[G, n, H, W, C]` (G groups of n
        examples); weight, bias: `[C]`; shift: `[C]`, a guess of the mean known before the pass (the running mean),
        which a one-pass variance may subtract first. Returns (y like xg, mean `[G, C]`, biased variance
        `[G, C]`); the statistics are for the running averages, outside the gradient."""
        ...

    def folded_conv(self, x: jax.Array, p: ConvParams, spec: ConvSpec) -> jax.Array:
        """One BatchNorm-folded convolution and its activation."""
        ...

    def folded_block(self, x: jax.Array, params: Sequence[ConvParams], block: FusedBlock) -> jax.Array:
        """A block's folded convolutions in order (its residual is added by the caller)."""
        ...

    def run_batch(self, forward: Callable[[jax.Array], jax.Array], x: jax.Array, devices: int) -> jax.Array:
        """`forward(x)` for a batch `x` sharded over `devices` devices, computed as this backend runs a batch."""
        ...

    def loops_over_batch(self, batch: int, devices: int) -> bool:
        """Whether `run_batch` computes a batch of `batch` images over `devices` devices in a loop (XLA's cost
        analysis then counts one iteration)."""
        ...


def conv_bias_act(conv: Conv2dFn, x: jax.Array, p: ConvParams, spec: ConvSpec) -> jax.Array:
    """A folded convolution computed by `conv` (a backend's `conv2d`), then its bias and activation."""
    w, b = p["weight"].astype(x.dtype), p["bias"].astype(x.dtype)
    groups = x.shape[-1] if spec.depthwise else 1
    return apply_act(conv(x, w, spec.stride, spec.padding, groups) + b, spec.act)
