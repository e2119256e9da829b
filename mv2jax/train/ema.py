"""timm's ModelEmaV3 as pure functions over a pytree of arrays (params and BatchNorm statistics).

timm's train.py calls `model_ema.update(model, step=num_updates)` right after `num_updates += 1`, so the step
passed here is the 1-based count of optimizer updates done so far. At step 1 the decay is 0: the EMA is reset to
the model (with or without warmup).
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


def ema_init(tree: Any) -> Any:
    """A copy of `tree` (a separate buffer, safe to donate independently) to start the EMA from."""
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def ema_decay(
    step: Any,
    decay: float,
    warmup: bool = False,
    warmup_power: float = 2 / 3,
    warmup_gamma: float = 1.0,
    min_decay: float = 0.0,
    update_after_step: int = 0,
) -> Any:
    """timm `ModelEmaV3.get_decay(step)`; `step` = updates done including this one (1-based), None = `decay`.

    s = max(0, step - update_after_step - 1); 0 if s <= 0; with warmup clamp(1 - (1 + s/gamma)^-power,
    min_decay, decay), else decay. A Python float for a concrete int, a jnp scalar for a traced step.
    """
    if step is None:
        return decay
    if isinstance(step, numbers.Integral):
        s = max(0, int(step) - update_after_step - 1)
        if s <= 0:
            return 0.0
        if not warmup:
            return decay
        d = 1 - (1 + s / warmup_gamma) ** -warmup_power
        return max(min(d, decay), min_decay)
    s = jnp.maximum(0, jnp.asarray(step) - update_after_step - 1).astype(jnp.result_type(float))
    if warmup:
        d = jnp.clip(1 - (1 + s / warmup_gamma) ** -warmup_power, max=decay)
        d = jnp.maximum(d, min_decay)
    else:
        d = jnp.full_like(s, decay)
    return jnp.where(s <= 0, 0.0, d)


@jax.jit
def _lerp(ema: jax.Array, new: jax.Array, weight: Any) -> jax.Array:
    # torch.lerp's two-sided formula (exact endpoint at weight 1, i.e. decay 0). Jitted: traced once per leaf
    # shape, not once per leaf.
    new = new.astype(ema.dtype)
    w = jnp.asarray(weight, ema.dtype)
    return jnp.where(jnp.abs(w) < 0.5, ema + w * (new - ema), new - (new - ema) * (1 - w))


def ema_update(ema_tree: Any, new_tree: Any, decay: Any, average_mask: Any = None) -> Any:
    """One ModelEmaV3 update: ema = lerp(ema, new, 1 - decay) on floating leaves, copy of `new` elsewhere.

    Integer leaves (e.g. a step counter like torch's `num_batches_tracked`) are copied, as timm copies non-float
    buffers. `average_mask` (pytree of bools like the trees) limits averaging to True leaves and copies the rest
    (timm's `exclude_buffers=True`: average params, copy BN statistics; see `params_only_mask`).
    """
    weight = 1.0 - decay

    def update(ema, new, avg=True):
        if not jnp.issubdtype(ema.dtype, jnp.floating):
            return jnp.asarray(new, ema.dtype)
        return jnp.where(avg, _lerp(ema, new, weight), new.astype(ema.dtype))

    if average_mask is None:
        return jax.tree.map(update, ema_tree, new_tree)
    return jax.tree.map(update, ema_tree, new_tree, average_mask)


def params_only_mask(state: Any) -> Any:
    """For an NNX state: True on `nnx.Param` leaves, False on others (BatchNorm stats) — `exclude_buffers`."""
    return jax.tree.map(
        lambda v: jax.tree.map(lambda _: isinstance(v, nnx.Param), v),
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
