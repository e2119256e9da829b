"""The pure train and eval steps (one jitted function each) and the NaN/Inf check.

Batches are dicts of arrays with the leading axis the (global) batch:
`image` f32/bf16 `[B, H, W, C]` (NHWC, normalised), and either `label` int `[B]` (hard labels, label-smoothing
cross entropy) or `target` f32 `[B, num_classes]` (soft targets from mixup/cutmix, smoothing already folded in,
as timm's SoftTargetCrossEntropy). Eval batches may carry `mask` bool `[B]` (False = padding, not counted).

A train step is timm's train.py iteration: forward in train mode (batch statistics, dropout and drop path),
loss in float32 (float64 for a float64 model), gradients wrt the parameters only, optimizer update with the lr
of update `step` (the schedule lives inside the optax transform), BN running statistics updated, `step += 1`,
then the ModelEmaV3 update with timm's `step=num_updates` (1-based). Mixed precision (`--amp`) is a model created
with `dtype=jnp.bfloat16` (compute) and float32 params: losses, log-softmax, BN statistics and updates stay
float32.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from mv2jax.metrics import example_metrics, masked_sums
from mv2jax.models.layers import BatchStatsBuffer, check_running_stats_from
from mv2jax.train.ema import ema_decay, ema_update
from mv2jax.train.losses import label_smoothing_cross_entropy, soft_target_cross_entropy
from mv2jax.train.mesh import batch_sharding, replicated, shard_train_state
from mv2jax.train.state import TrainState, ema_variables, merge_model, split_model

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Options of the train step (timm flag in brackets).

    label_smoothing: [--smoothing] for hard labels; ignored for soft `target` batches (mixup folds it in).
    ema_decay: [--model-ema-decay]; used when the state has an EMA. ema_warmup: [--model-ema-warmup].
    bn_stat_groups: BatchNorm statistics per this many equal contiguous groups of the global batch: the number
      of data-parallel devices for timm's per-GPU BN, 1 for [--sync-bn] (see `mv2jax.train.mesh.bn_stat_groups`).
    bn_running_stats: which stat groups update the BN running statistics: 'mean' over them ([--dist-bn reduce])
      or 'first' (group 0 = device 0: [--dist-bn broadcast]); see `mv2jax.train.mesh.dist_bn_running_stats`.
    flat_norms: the gradient and parameter norms as one reduction over the concatenated leaves (few kernels; with
      the packed optimizer, which concatenates them too), else per leaf, summed (with the per-parameter optimizer:
      XLA:TPU fuses them into its kernels, where a concatenation costs HBM bytes).
    bn_stats_buffer: the BatchNorms write their batch statistics into one array, folded into the running
      statistics after the forward (`mv2jax.models.layers.BatchStatsBuffer`; `stats_buffer_on` says where).
    """

    label_smoothing: float = 0.1
    ema_decay: float = 0.9998
    ema_warmup: bool = False
    bn_stat_groups: int = 1
    bn_running_stats: str = "mean"
    flat_norms: bool = True
    bn_stats_buffer: bool = False

    def __post_init__(self):
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1], got {self.ema_decay}")
        if self.bn_stat_groups < 1:
            raise ValueError(f"bn_stat_groups must be >= 1, got {self.bn_stat_groups}")
        check_running_stats_from(self.bn_running_stats)


def train_loss(logits: jax.Array, batch: Batch, smoothing: float) -> jax.Array:
    """timm train.py's loss, mean over the batch, float32 (float64 for float64 logits): SoftTargetCrossEntropy
    for a batch with `target` (mixup; smoothing already in the targets), else LabelSmoothingCrossEntropy
    (`smoothing`) of `label`."""
    if "target" in batch:
        return soft_target_cross_entropy(logits, batch["target"])
    return label_smoothing_cross_entropy(logits, batch["label"], smoothing)


def _forward_loss(params, batch_stats, rng_state, batch: Batch, graphdef: nnx.GraphDef, config: StepConfig):
    """Loss of a train-mode forward; aux = the model's updated (batch_stats, rng_state)."""
    model = merge_model(graphdef, params, batch_stats, rng_state)
    model.train()
    model.set_bn_stat_groups(config.bn_stat_groups, config.bn_running_stats)
    stats = BatchStatsBuffer(model) if config.bn_stats_buffer else None
    loss = train_loss(model(batch["image"]), batch, config.label_smoothing)
    if stats is not None:
        stats.fold()
    _, _, new_stats, new_rng = split_model(model)
    return loss, (new_stats, new_rng)


def stats_buffer_on(platform: str) -> bool:
    """Whether train.py's step collects the BatchNorm statistics in one array (`StepConfig.bn_stats_buffer`) on
    `platform` ('cpu', 'gpu' or 'tpu'): on a TPU, where it shrinks the heap. XLA:GPU runs each in-place write as a
    kernel of its own, and the CPU step does not need it (BENCHMARKS.md)."""
    return platform == "tpu"


def _global_norm(tree, flat: bool = True) -> jax.Array:
    """L2 norm of all leaves together, float32. `flat`: one reduction over the concatenated leaves (per-leaf sums
    compile to a few XLA fusions per leaf where nothing else runs per leaf); else per-leaf sums (`StepConfig`)."""
    leaves = [x.astype(jnp.float32) for x in jax.tree.leaves(tree)]
    if not flat:
        return jnp.sqrt(sum((jnp.sum(jnp.square(x)) for x in leaves), jnp.zeros((), jnp.float32)))
    joined = jnp.concatenate([jnp.ravel(x) for x in leaves]) if leaves else jnp.zeros((0,), jnp.float32)
    return jnp.sqrt(jnp.sum(jnp.square(joined)))


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: Callable[[Any], Any] | float,
    config: StepConfig,
) -> tuple[TrainState, Metrics]:
    """One optimizer update (pure; jit it with `make_train_step`). Returns (new state, metrics).

    metrics (float32 scalars unless said): `loss` (mean train loss of the batch), `lr` (the lr this update used,
    `schedule(step)`), `grad_norm` (global L2 norm of the gradients, before the optimizer), `param_norm` (global
    L2 norm of the updated parameters), `ema_decay` (the decay this EMA update used; absent without EMA) and
    `finite` (bool: loss, gradient and parameter norms all finite).
    """
    grad_fn = jax.value_and_grad(_forward_loss, has_aux=True)
    (loss, (batch_stats, rng_state)), grads = grad_fn(
        state.params, state.batch_stats, state.rng_state, batch, graphdef, config
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step = state.step + 1
    metrics = {
        "loss": loss,
        "lr": jnp.asarray(schedule(state.step) if callable(schedule) else schedule, jnp.float32),
        "grad_norm": _global_norm(grads, config.flat_norms),
        "param_norm": _global_norm(params, config.flat_norms),
    }
    ema = state.ema
    if ema is not None:  # ModelEmaV3.update(model, step=num_updates) right after num_updates += 1
        decay = ema_decay(step, config.ema_decay, warmup=config.ema_warmup)
        ema = ema_update(ema, ema_variables(params, batch_stats), decay)
        metrics["ema_decay"] = jnp.asarray(decay, jnp.float32)
    metrics["finite"] = jnp.isfinite(loss) & jnp.isfinite(metrics["grad_norm"]) & jnp.isfinite(metrics["param_norm"])
    new_state = TrainState(
        step=step, params=params, batch_stats=batch_stats, rng_state=rng_state, opt_state=opt_state, ema=ema
    )
    return new_state, metrics


def eval_step(params, batch_stats, batch: Batch, rng_state, *, graphdef: nnx.GraphDef) -> Metrics:
    """Eval-mode forward over a batch; raw or EMA weights alike (pass `state.ema['params']`, ...).

    Returns `mv2jax.metrics.masked_sums` over the examples with `mask` True (all if no mask), to be added up
    over batches and turned into the reported numbers by `mv2jax.metrics.averages`: `loss_sum` (float32, plain
    cross entropy as timm's validate), `top1`, `top5` (correct counts; top-5 is top-min(5, K)) and `count`.
    """
    model = merge_model(graphdef, params, batch_stats, rng_state)
    model.eval()
    labels = batch["label"]
    return masked_sums(example_metrics(model(batch["image"]), labels), labels, batch.get("mask"))


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: Callable[[Any], Any] | float,
    config: StepConfig,
    mesh: Mesh | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """`train_step` jitted once for these static pieces, with the state donated (argument 0).

    With a mesh: the state is replicated, the batch split on its `data` axis, the outputs replicated, i.e.
    `jax.jit(step, in_shardings=(replicated, batch_sharding), out_shardings=replicated, donate_argnums=0)`.
    Call it with arrays already placed that way (`shard_train_state`, `shard_batch`)."""
    fn = functools.partial(train_step, graphdef=graphdef, tx=tx, schedule=schedule, config=config)
    if mesh is None:
        return jax.jit(fn, donate_argnums=0)
    return jax.jit(
        fn, in_shardings=(replicated(mesh), batch_sharding(mesh)), out_shardings=replicated(mesh), donate_argnums=0
    )


def jit_eval_step(graphdef: nnx.GraphDef, mesh: Mesh | None = None) -> Callable[..., Metrics]:
    """`eval_step` jitted as `(params, batch_stats, batch, rng_state) -> metrics`; with a mesh, the batch split on
    `data` and everything else replicated (`make_eval_step` binds the rng state)."""

    def run(params, batch_stats, batch, rngs):
        return eval_step(params, batch_stats, batch, rngs, graphdef=graphdef)

    if mesh is None:
        return jax.jit(run)
    rep = replicated(mesh)
    return jax.jit(run, in_shardings=(rep, rep, batch_sharding(mesh), rep), out_shardings=rep)


def make_eval_step(graphdef: nnx.GraphDef, rng_state, mesh: Mesh | None = None) -> Callable[..., Metrics]:
    """`eval_step` jitted, as `(params, batch_stats, batch) -> metrics` (no donation: the weights are reused).

    `rng_state` (unused in eval mode, needed to rebuild the module) is bound here and passed to the jitted
    function as an argument (replicated on the mesh), never captured as a constant."""
    jitted = jit_eval_step(graphdef, mesh)
    if mesh is not None:
        rng_state = shard_train_state(rng_state, mesh)

    def evaluate(params, batch_stats, batch: Batch) -> Metrics:
        return jitted(params, batch_stats, batch, rng_state)

    return evaluate


def check_finite(metrics: Mapping[str, Any], step: int) -> None:
    """Raise FloatingPointError (one line) if the step's `finite` flag is False. Fetches the flag (syncs)."""
    if bool(np.asarray(metrics["finite"])):
        return
    loss, gnorm = (float(np.asarray(metrics.get(k, np.nan))) for k in ("loss", "grad_norm"))
    lr = float(np.asarray(metrics.get("lr", np.nan)))
    raise FloatingPointError(
        f"non-finite training at step {step} (loss={loss:.4g}, grad_norm={gnorm:.4g}, lr={lr:.3g}): the run "
        f"diverged; restart from the last good checkpoint with a lower learning rate (--lr)"
    )
