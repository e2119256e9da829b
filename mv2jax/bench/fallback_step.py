"""A stand-in RA-recipe train step, used only while `mv2jax.train.step` is not importable.

Same work as timm's train.py iteration: train-mode forward (batch statistics, dropout), label-smoothing cross
entropy in float32, gradients wrt the parameters, RMSpropTF update (coupled weight decay off 1-D params), then
the ModelEmaV3 update over parameters and BN statistics. `make_train_step` returns `(step, state)` with
`step(state, batch) -> (state, metrics)` jitted with the state donated; swap for the real module when it lands.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mv2jax.train.ema import ema_decay, ema_init, ema_update
from mv2jax.train.losses import label_smoothing_cross_entropy

State = dict[str, Any]


def _split(model: nnx.Module) -> tuple[nnx.GraphDef, Any, Any, Any]:
    graphdef, params, stats, rngs = nnx.split(model, nnx.Param, nnx.BatchStat, nnx.RngState)
    return graphdef, params.to_pure_dict(), stats.to_pure_dict(), rngs.to_pure_dict()


def make_train_step(
    model: nnx.Module, tx: optax.GradientTransformation, *, smoothing: float, ema_decay_value: float,
) -> tuple[Callable[[State, dict], tuple[State, dict]], State]:
    """(jitted donated step, initial state) for `model` (NNX, train mode) and the optax transform `tx`."""
    graphdef, params, stats, rngs = _split(model.train())

    def loss_fn(params, stats, rngs, batch):
        module = nnx.merge(graphdef, params, stats, rngs)
        loss = label_smoothing_cross_entropy(module(batch["image"]), batch["label"], smoothing)
        _, _, new_stats, new_rngs = _split(module)
        return loss, (new_stats, new_rngs)

    def step(state: State, batch: dict) -> tuple[State, dict]:
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (stats, rngs)), grads = grad_fn(state["params"], state["batch_stats"], state["rngs"], batch)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        count = state["step"] + 1
        ema = ema_update(state["ema"], {"params": params, "batch_stats": stats},
                         ema_decay(count, ema_decay_value))
        new = {"step": count, "params": params, "batch_stats": stats, "rngs": rngs, "opt_state": opt_state,
               "ema": ema}
        return new, {"loss": loss}

    state = {"step": jnp.zeros((), jnp.int32), "params": params, "batch_stats": stats, "rngs": rngs,
             "opt_state": tx.init(params), "ema": ema_init({"params": params, "batch_stats": stats})}
    return jax.jit(step, donate_argnums=0), state
