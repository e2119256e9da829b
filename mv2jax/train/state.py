"""The training state as a pytree of plain arrays, and the NNX model <-> pure-array round trip.

A model is split once into a static `nnx.GraphDef` (the module tree, shapes, train/eval flags; kept outside the
pytree) and three trees of plain arrays (nested dicts, as `nnx.to_pure_dict` gives them):

- `params`: the `nnx.Param` leaves (conv kernels HWIO, linear `[in, out]`, BN affine `[C]`);
- `batch_stats`: the `nnx.BatchStat` leaves (BN `running_mean`/`running_var` `[C]`, int32 `num_batches_tracked`);
- `rng_state`: the NNX RNG streams of DropPath / Dropout (`'dropout'` stream: a typed PRNG key and a uint32 call
  count each). They are carried from step to step: every stream is called once per train step, so the masks of
  step `n` are a function of the model's seed, the layer and `n` only (resuming from a saved state replays them).

Only plain arrays cross `jax.jit` boundaries: merging NNX Variable objects inside a traced gradient raises
Flax's TraceContextError, so `merge_model` builds a fresh module from arrays inside the traced function.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mv2jax.train.ema import ema_init
from mv2jax.train.mesh import local_copy

PyTree = Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything a train step reads and writes (a pytree of arrays; donate it to the jitted step).

    step: int32 scalar, optimizer updates done so far (timm's `num_updates`); the next update uses lr(step).
    params, batch_stats, rng_state: the model's arrays (see the module docstring).
    opt_state: the optax state of `tx` over `params`.
    ema: `{'params': ..., 'batch_stats': ...}` (timm ModelEmaV3 over params and BN buffers), or None without EMA.
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    rng_state: PyTree
    opt_state: optax.OptState
    ema: PyTree | None = None

    def replace(self, **changes: Any) -> TrainState:
        return dataclasses.replace(self, **changes)


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, PyTree, PyTree, PyTree]:
    """model -> (graphdef, params, batch_stats, rng_state), the last three as nested dicts of arrays.

    Raises if the model holds variables of any other kind (they would be lost on merge)."""
    graphdef, params, batch_stats, rng_state, rest = nnx.split(model, nnx.Param, nnx.BatchStat, nnx.RngState, ...)
    leftover = [".".join(map(str, path)) for path, _ in nnx.to_flat_state(rest)]
    if leftover:
        raise ValueError(f"model holds variables that are not Param, BatchStat or RNG state: {leftover[:5]}")
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats), nnx.to_pure_dict(rng_state)


def merge_model(graphdef: nnx.GraphDef, params: PyTree, batch_stats: PyTree, rng_state: PyTree) -> nnx.Module:
    """A new module from a graphdef and array trees (safe inside `jax.jit` / `jax.grad`)."""
    return nnx.merge(graphdef, params, batch_stats, rng_state)


def ema_variables(params: PyTree, batch_stats: PyTree) -> PyTree:
    """The tree the EMA averages: `{'params': ..., 'batch_stats': ...}`."""
    return {"params": params, "batch_stats": batch_stats}


def create_train_state(
    model: nnx.Module, tx: optax.GradientTransformation, *, use_ema: bool = False
) -> tuple[nnx.GraphDef, TrainState]:
    """(graphdef, state at step 0) for training `model` with the optax transform `tx`.

    The model itself is left untouched (the state holds copies). With `use_ema` the EMA starts as a copy of the
    weights and BN statistics, as timm's ModelEmaV3 deep-copies the model at creation."""
    graphdef, params, batch_stats, rng_state = split_model(model)
    params, batch_stats, rng_state = (jax.tree.map(jnp.copy, t) for t in (params, batch_stats, rng_state))
    ema = ema_init(ema_variables(params, batch_stats)) if use_ema else None
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        rng_state=rng_state,
        opt_state=tx.init(params),
        ema=ema,
    )
    return graphdef, state


def model_from_state(graphdef: nnx.GraphDef, state: TrainState, *, use_ema: bool = False) -> nnx.Module:
    """The trained (or, with `use_ema`, the EMA) model as an NNX module in eval mode, e.g. for
    `mv2jax.convert.mv2jax_to_timm`. Works on replicated multi-process states (uses this process's copy)."""
    if use_ema and state.ema is None:
        raise ValueError("this train state has no EMA (create it with use_ema=True)")
    weights = state.ema if use_ema else ema_variables(state.params, state.batch_stats)
    trees = (weights["params"], weights["batch_stats"], state.rng_state)
    return merge_model(graphdef, *jax.tree.map(local_copy, trees)).eval()
