"""The backend seam: convolutions and BatchNorm+activation, forward and backward, and how the BatchNorm-folded
network runs a batch, behind one typed interface (`Backend`, in `base.py`) and one registry (`BACKENDS`).

- 'xla': the reference formulation. `lax.conv_general_dilated`, textbook BatchNorm and activation,
  differentiated by JAX's autodiff, the whole batch at once. It is what GPUs and TPUs run.
- 'cpu': the XLA:CPU fast path. Depthwise convolutions as shifted multiply-adds, 1x1 convolutions as matmuls,
  hand-written gradients, the fusion-steering tricks XLA:CPU needs and its own batch loop. It lives in `cpu.py`
  and nowhere else.

`resolve_conv_impl('auto')` picks 'cpu' only when JAX's default backend is the CPU.
"""

from __future__ import annotations

from typing import Literal

import jax

from mv2jax.models.backends import cpu, xla
from mv2jax.models.backends.base import Backend

ConvImpl = Literal["auto", "xla", "cpu"]
BACKENDS: dict[str, Backend] = {"xla": xla.XlaBackend(), "cpu": cpu.CpuBackend()}
CONV_IMPLS = ("auto", *BACKENDS)

__all__ = ["BACKENDS", "CONV_IMPLS", "Backend", "ConvImpl", "get_backend", "resolve_conv_impl"]


def resolve_conv_impl(conv_impl: str) -> str:
    """'auto' -> 'cpu' when JAX's default backend is the CPU, else 'xla'; 'xla' and 'cpu' as given."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv_impl {conv_impl!r}: use one of {', '.join(CONV_IMPLS)}")
    if conv_impl == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "xla"
    return conv_impl


def get_backend(conv_impl: str | Backend) -> Backend:
    """The backend for a conv_impl name ('auto' resolved), or `conv_impl` itself if it is a backend already."""
    if isinstance(conv_impl, str):
        return BACKENDS[resolve_conv_impl(conv_impl)]
    return conv_impl
