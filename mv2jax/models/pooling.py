"""timm's global pooling (SelectAdaptivePool2d with flatten), defined once as data: each pool type is the global
reductions it takes and how it combines them. The network computes it here (`global_pool_2d`); the ONNX writer
builds the same table out of ONNX nodes."""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class GlobalPool:
    """Global `reductions` over H and W ('avg', 'max'), combined by their 'mean' or their 'concat' along
    channels; no reductions keeps the unpooled map."""

    reductions: tuple[str, ...]
    combine: str = "mean"

    @property
    def channel_factor(self) -> int:
        """Pooled channels per feature channel."""
        return len(self.reductions) if self.combine == "concat" else 1


GLOBAL_POOLS = {
    "avg": GlobalPool(("avg",)),
    "max": GlobalPool(("max",)),
    "avgmax": GlobalPool(("avg", "max")),
    "catavgmax": GlobalPool(("avg", "max"), "concat"),
    "": GlobalPool(()),
}
POOL_TYPES = tuple(GLOBAL_POOLS)
_REDUCE: dict[str, Callable[..., jax.Array]] = {"avg": jnp.mean, "max": jnp.max}


def check_pool_type(pool_type: str) -> GlobalPool:
    if pool_type not in GLOBAL_POOLS:
        raise ValueError(f"unknown global_pool {pool_type!r}: use one of {POOL_TYPES}")
    return GLOBAL_POOLS[pool_type]


def global_pool_2d(x: jax.Array, pool_type: str) -> jax.Array:
    """timm's SelectAdaptivePool2d with flatten, over NHWC -> `[B, C]` (`[B, 2C]` for 'catavgmax'); '' -> `x`."""
    pool = check_pool_type(pool_type)
    if not pool.reductions:
        return x
    pooled = [_REDUCE[r](x, axis=(1, 2)) for r in pool.reductions]
    if len(pooled) == 1:
        return pooled[0]
    if pool.combine == "concat":
        return jnp.concatenate(pooled, axis=-1)
    return (1.0 / len(pooled)) * functools.reduce(operator.add, pooled)
