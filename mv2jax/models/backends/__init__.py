"""The backend seam: convolutions and BatchNorm+activation, forward and backward, behind one dispatch.

- 'xla': the reference formulation. `lax.conv_general_dilated`, textbook BatchNorm and activation,
  differentiated by JAX's autodiff. It is what GPUs and TPUs run.
- 'cpu': the XLA:CPU fast path. Depthwise convolutions as shifted multiply-adds, 1x1 convolutions as matmuls,
  hand-written gradients and the fusion-steering tricks XLA:CPU needs. It lives in `cpu.py` and nowhere else.

`resolve_conv_impl('auto')` picks 'cpu' only when JAX's default backend is the CPU.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Literal

import jax

ConvImpl = Literal["auto", "xla", "cpu"]
BACKENDS = ("xla", "cpu")
CONV_IMPLS = ("auto", *BACKENDS)


def resolve_conv_impl(conv_impl: str) -> str:
    """'auto' -> 'cpu' when JAX's default backend is the CPU, else 'xla'; 'xla' and 'cpu' as given."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv_impl {conv_impl!r}: use one of {', '.join(CONV_IMPLS)}")
    if conv_impl == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "xla"
    return conv_impl


def get_backend(conv_impl: str) -> ModuleType:
    """The backend module for a resolved or 'auto' conv_impl. Each backend module provides the same names:
    `conv2d(x, w, stride, padding, groups)`, `batch_norm_train(xg, weight, bias, eps, act)`,
    `folded_conv(x, params, spec)`, `folded_block(x, params, convs)`, `INFERENCE_BATCH_CHUNK` and
    `INFERENCE_COMPILER_OPTIONS`."""
    return importlib.import_module(f"{__name__}.{resolve_conv_impl(conv_impl)}")
