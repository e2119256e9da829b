"""mv2jax: timm's MobileNetV2 family in JAX / Flax NNX.

Submodules load on first use, so data-loading worker processes that import `mv2jax.data` do not pay for
JAX and Flax.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["convert", "create_model", "data", "list_models", "load_model", "models", "train"]
_SUBMODULES = ("convert", "data", "models", "train")

if TYPE_CHECKING:
    from mv2jax import convert, data, models, train
    from mv2jax.models import create_model, list_models, load_model


def __getattr__(name: str):
    if name in ("create_model", "list_models", "load_model"):
        return getattr(importlib.import_module("mv2jax.models"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"mv2jax.{name}")
    raise AttributeError(f"module 'mv2jax' has no attribute {name!r}")
