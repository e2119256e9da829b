"""Shared JAX-side pieces of the train-step tests (no torch: the multi-process workers import only this): the
compared recipe as timm flags, random batches, a tiny test-only MobileNetV2 (3 stages, fast to compile; built
identically on the timm side in `timm_side.py`), an mv2jax training run through the jitted step, a compile
counter, and relative errors.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from mv2jax.convert import mv2jax_to_timm
from mv2jax.models.arch import ArchConfig
from mv2jax.models.mobilenetv2 import MobileNetV2
from mv2jax.train.mesh import shard_batch, shard_train_state
from mv2jax.train.optim import create_optimizer
from mv2jax.train.schedules import create_schedule
from mv2jax.train.state import create_train_state, model_from_state
from mv2jax.train.step import StepConfig, make_train_step

NUM_CLASSES = 10
TINY_STAGES = ("ds_r1_k3_s1_c16", "ir_r2_k3_s2_e6_c24", "ir_r1_k3_s2_e6_c32")
TINY_MULTIPLIER = 0.35
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax.monitoring event of an XLA compile


@dataclasses.dataclass(frozen=True)
class Recipe:
    """timm train.py flags of the compared runs (RA recipe's optimizer and EMA; a schedule that changes the lr
    at every update: warmup over 2 updates, then a step decay per update)."""

    lr: float = 1e-4
    weight_decay: float = 1e-5
    opt_eps: float = 1e-3
    momentum: float = 0.9
    smoothing: float = 0.1
    sched: str = "step"
    epochs: int = 10
    updates_per_epoch: int = 2
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    decay_epochs: float = 0.5
    decay_rate: float = 0.7
    ema_decay: float = 0.9999
    ema_warmup: bool = True

    def schedule(self):
        return create_schedule(
            self.sched,
            lr=self.lr,
            epochs=self.epochs,
            steps_per_epoch=self.updates_per_epoch,
            warmup_epochs=self.warmup_epochs,
            warmup_lr=self.warmup_lr,
            decay_epochs=self.decay_epochs,
            decay_rate=self.decay_rate,
            sched_on_updates=True,
        )

    def optax(self, schedule):
        return create_optimizer(
            "rmsproptf", schedule, weight_decay=self.weight_decay, eps=self.opt_eps, momentum=self.momentum
        )


def make_batches(n: int, batch: int, size: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """`n` batches: `image` f32 [batch, size, size, 3] NHWC, `label` int32 [batch]."""
    rng = np.random.default_rng(seed)
    return [
        {
            "image": rng.standard_normal((batch, size, size, 3)).astype(np.float32),
            "label": rng.integers(0, NUM_CLASSES, batch).astype(np.int32),
        }
        for _ in range(n)
    ]


def tiny_mv2jax(**kwargs) -> MobileNetV2:
    """The tiny network: timm's MobileNetV2 recipe with 3 stages (ds, ir x2 with a residual, ir), 10 classes
    (seeded; `timm_side.tiny_timm` is the same network in timm, `timm_side.load_timm` copies its weights)."""
    arch = ArchConfig(TINY_MULTIPLIER, stages=TINY_STAGES)
    return MobileNetV2(arch, num_classes=NUM_CLASSES, rngs=nnx.Rngs(params=0, dropout=1), **kwargs)


def mv2jax_train(
    model: MobileNetV2,
    batches,
    recipe: Recipe,
    *,
    bn_stat_groups: int = 1,
    bn_running_stats="mean",
    bn_stats_buffer: bool = False,
    mesh=None,
):
    """The same run through mv2jax's jitted step (on `mesh` if given: state replicated, batch on `data`);
    `bn_stat_groups`, `bn_running_stats`, `bn_stats_buffer` as in `StepConfig`.

    Returns (graphdef, final state, per-step metrics as numpy, the jitted step, the number of XLA compilations
    during steps 2..n: 0 when the step is compiled once)."""
    schedule = recipe.schedule()
    tx = recipe.optax(schedule)
    graphdef, state = create_train_state(model, tx, use_ema=True)
    config = StepConfig(
        label_smoothing=recipe.smoothing,
        ema_decay=recipe.ema_decay,
        ema_warmup=recipe.ema_warmup,
        bn_stat_groups=bn_stat_groups,
        bn_running_stats=bn_running_stats,
        bn_stats_buffer=bn_stats_buffer,
    )
    step = make_train_step(graphdef, tx, schedule, config, mesh)
    if mesh is not None:
        state = shard_train_state(state, mesh)
        batches = [shard_batch(b, mesh) for b in batches]
    state, first = step(state, batches[0])
    metrics = [jax.device_get(first)]
    with CompileCounter() as compiles:
        for batch in batches[1:]:
            state, m = step(state, batch)
            metrics.append(jax.device_get(m))
    return graphdef, state, metrics, step, compiles.count


class CompileCounter:
    """Counts XLA backend compilations (any function) while active: `with CompileCounter() as c: ...; c.count`."""

    def __init__(self):
        self.count = 0

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        self.count += event == BACKEND_COMPILE_EVENT

    def __enter__(self) -> CompileCounter:
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listen)


def mv2jax_state_dicts(graphdef, state) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(model, EMA) of a train state as timm state dicts."""
    return (
        mv2jax_to_timm(model_from_state(graphdef, state)),
        mv2jax_to_timm(model_from_state(graphdef, state, use_ema=True)),
    )


def rel_errors(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray], floor: float = 1e-6) -> dict[str, float]:
    """Per key max|a - b| / max(max|b|, floor), in float64.

    The floor keeps tensors that are mathematically zero from dividing noise by noise: the bias of a BN whose
    output only feeds conv -> train-mode BN gets an exactly-zero gradient (the next BN removes any per-channel
    shift), so it stays at its zero init up to ~1e-17 rounding noise on both sides."""
    assert set(ours) == set(ref), set(ours) ^ set(ref)
    out = {}
    for k, b in ref.items():
        a, b = np.asarray(ours[k], np.float64), np.asarray(b, np.float64)
        scale = max(float(np.max(np.abs(b))), floor)
        out[k] = float(np.max(np.abs(a - b)) / scale)
    return out


def worst(errors: dict[str, float]) -> tuple[str, float]:
    key = max(errors, key=errors.get)
    return key, errors[key]


def global_rel_error(ours, ref) -> float:
    """||a - b|| / ||b|| over all floating leaves of two same-structured pytrees (state dicts, param trees) at
    once (L2, float64): a whole-state measure that a single ill-conditioned tensor does not dominate."""
    pairs = [
        (np.asarray(a, np.float64), np.asarray(b, np.float64))
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True)
        if np.issubdtype(np.asarray(b).dtype, np.floating)
    ]
    diff = sum(float(np.sum((a - b) ** 2)) for a, b in pairs)
    return (diff / sum(float(np.sum(b**2)) for _, b in pairs)) ** 0.5
