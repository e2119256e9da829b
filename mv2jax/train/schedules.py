"""timm's learning-rate schedules (step, cosine, constant) as `update index -> lr` functions.

timm's schedulers are driven by train.py: the lr of epoch `e` is set by `step(e)` at the end of the previous epoch
(per-epoch mode), or the lr of update `u` by `step_update(u)` after the previous update (`--sched-on-updates`).
Either way the lr that update `u` (0-based) uses is `_get_lr(t)` with scheduler time
`t = u // steps_per_epoch` (per epoch) or `t = u` (per update). `LrSchedule` computes exactly that.

A concrete Python/numpy int gives a Python float computed with timm's own float64 arithmetic. A traced (or jax
array) step gives a jnp scalar: step decay uses a table of exact decay boundaries (float32 `t // decay_t` can land
on the wrong side of a boundary, e.g. 72 // 7.2 is 9 in float64 but 10 in float32) and cosine uses
`sin(pi/2 * remaining)^2`, which keeps float32 relative accuracy near the end of the cycle.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax.numpy as jnp
import numpy as np

SCHEDULES = ("step", "cosine", "constant")
LR_BASE_SCALES = ("", "linear", "sqrt")
# timm train.py: an empty --lr-base-scale means sqrt scaling when the optimizer name contains one of these.
_SQRT_SCALED_OPT_PARTS = ("ada", "lamb")


@dataclasses.dataclass(frozen=True)
class LrSchedule:
    """timm's StepLRScheduler / CosineLRScheduler (one cycle, no noise, k_decay 1) as a function of the update.

    Time fields are in scheduler units: epochs, or updates when `steps_per_t == 1` (`sched_on_updates`).
    Call with the 0-based update index; returns the lr (per update) that update uses in timm's train.py.
    """

    kind: str  # 'step' or 'cosine' ('constant' is a step schedule with decay_t=1, decay_rate=1, as in timm)
    lr: float
    steps_per_t: int  # updates per scheduler time unit
    t_end: int  # scheduler time units in the whole run (incl. warmup prefix and cooldown)
    warmup_t: int = 0
    warmup_lr: float = 0.0
    warmup_prefix: bool = False
    decay_t: float = 90.0  # step: decay interval
    decay_rate: float = 0.1  # step: factor per interval
    t_initial: int = 1  # cosine: cycle length
    min_lr: float = 0.0  # cosine: floor, and lr after the cycle (cooldown)

    def __call__(self, step):
        """lr (float) for the 0-based update `step`; a Python float for a concrete int, else a jnp scalar."""
        if isinstance(step, numbers.Integral):
            return self.at_time(int(step) // self.steps_per_t)
        t = jnp.asarray(step) // self.steps_per_t
        return self._traced_at_time(t)

    def at_time(self, t: int) -> float:
        """timm's `_get_lr(t)` in Python floats (same operations, same order)."""
        if t < self.warmup_t:
            return self.warmup_lr + t * ((self.lr - self.warmup_lr) / self.warmup_t)
        if self.warmup_prefix:
            t = t - self.warmup_t
        if self.kind == "step":
            return self.lr * (self.decay_rate ** (t // self.decay_t))
        if t >= self.t_initial:  # past the single cycle (timm cycle_limit=1): cooldown at min_lr
            return self.min_lr
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * t / self.t_initial))

    def _traced_at_time(self, t):
        dtype = jnp.result_type(float)
        t_f = t.astype(dtype)
        t_after = t - self.warmup_t if self.warmup_prefix else t
        main = self._traced_step(t_after, dtype) if self.kind == "step" else self._traced_cosine(t_after, dtype)
        if not self.warmup_t:
            return main
        warm = self.warmup_lr + t_f * ((self.lr - self.warmup_lr) / self.warmup_t)
        return jnp.where(t < self.warmup_t, warm, main)

    def _traced_step(self, t, dtype):
        bounds = _floor_div_bounds(self.decay_t, self.t_end + 1)
        values = np.array([self.lr * self.decay_rate**k for k in range(len(bounds) + 1)])
        k = jnp.searchsorted(jnp.asarray(bounds), t, side="right", method="compare_all")  # no while loop
        in_table = jnp.asarray(values, dtype)[k]
        # past the run (t > t_end): plain float formula, only approximate at decay boundaries
        beyond = self.lr * jnp.power(dtype.type(self.decay_rate), jnp.floor(t.astype(dtype) / self.decay_t))
        return jnp.where(t <= self.t_end, in_table, beyond)

    def _traced_cosine(self, t, dtype):
        remaining = (self.t_initial - t).astype(dtype) / self.t_initial
        # 0.5 * (1 + cos(pi * t / T)) == sin(pi/2 * (T - t) / T) ** 2, without float32 cancellation near t = T
        cos_lr = self.min_lr + (self.lr - self.min_lr) * jnp.sin((math.pi / 2) * remaining) ** 2
        return jnp.where(t < self.t_initial, cos_lr, jnp.asarray(self.min_lr, dtype))


def _floor_div_bounds(decay_t: float, t_max: int) -> np.ndarray:
    """Smallest integer t with `t // decay_t >= k` (Python float semantics), for k = 1, 2, ... while <= t_max."""
    bounds = []
    k = 1
    while True:
        b = max(0, math.ceil(k * decay_t))
        while b > 0 and (b - 1) // decay_t >= k:
            b -= 1
        while b // decay_t < k:
            b += 1
        if b > t_max:
            return np.asarray(bounds, dtype=np.int32)
        bounds.append(b)
        k += 1


def scheduled_epochs(
    sched: str,
    *,
    epochs: int,
    steps_per_epoch: int = 1,
    warmup_epochs: int = 0,
    warmup_prefix: bool = False,
    cooldown_epochs: int = 0,
    sched_on_updates: bool = False,
) -> int:
    """Number of epochs timm's train.py runs: `create_scheduler_v2`'s returned `num_epochs`.

    step/constant: `epochs` (+ warmup if `warmup_prefix`); cooldown is ignored by timm for these.
    cosine: cycle length (+ warmup if `warmup_prefix`) + cooldown, in updates floor-divided by steps_per_epoch
    when `sched_on_updates`.
    """
    _check_sched(sched)
    if sched != "cosine":
        return epochs + (warmup_epochs if warmup_prefix else 0)
    per_t = steps_per_epoch if sched_on_updates else 1
    t_total = epochs * per_t + (warmup_epochs * per_t if warmup_prefix else 0) + cooldown_epochs * per_t
    return t_total // per_t


def create_schedule(
    sched: str,
    *,
    lr: float,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: int = 0,
    warmup_lr: float = 0.0,
    warmup_prefix: bool = False,
    decay_epochs: float = 90.0,
    decay_rate: float = 0.1,
    min_lr: float = 0.0,
    cooldown_epochs: int = 0,
    sched_on_updates: bool = False,
) -> LrSchedule:
    """timm's `create_scheduler_v2(sched, ...)` as `step -> lr` (step: 0-based update index; lr per update).

    Per epoch unless `sched_on_updates` (timm's `step_on_epochs=not sched_on_updates`). Cosine runs one cycle of
    `epochs` then holds `min_lr` (cooldown). Run `scheduled_epochs(...)` epochs to match timm's train.py.
    """
    _check_sched(sched)
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    per_t = steps_per_epoch if sched_on_updates else 1  # scheduler time units per epoch
    n_epochs = scheduled_epochs(
        sched,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        warmup_epochs=warmup_epochs,
        warmup_prefix=warmup_prefix,
        cooldown_epochs=cooldown_epochs,
        sched_on_updates=sched_on_updates,
    )
    common = dict(
        lr=lr,
        steps_per_t=1 if sched_on_updates else steps_per_epoch,
        t_end=n_epochs * per_t,
        warmup_t=warmup_epochs * per_t,
        warmup_lr=warmup_lr,
        warmup_prefix=warmup_prefix,
    )
    if sched == "cosine":
        if epochs <= 0 or min_lr < 0:
            raise ValueError(f"cosine needs epochs > 0 and min_lr >= 0, got {epochs}, {min_lr}")
        return LrSchedule("cosine", t_initial=epochs * per_t, min_lr=min_lr, **common)
    if sched == "constant":
        return LrSchedule("step", decay_t=1, decay_rate=1.0, **common)
    return LrSchedule("step", decay_t=decay_epochs * per_t, decay_rate=decay_rate, **common)


def _check_sched(sched: str) -> None:
    if sched not in SCHEDULES:
        raise ValueError(f"Unsupported schedule {sched!r}; supported: {SCHEDULES}")


def scale_lr(
    lr_base: float,
    lr_base_size: int,
    global_batch: int,
    lr_base_scale: str = "",
    opt: str = "sgd",
) -> float:
    """timm train.py's lr when `--lr` is unset: `lr_base * (global_batch / lr_base_size)` (or its sqrt).

    `global_batch` = batch size per device x devices x grad-accum steps. An empty `lr_base_scale` means 'sqrt' for
    optimizers whose name contains 'ada' or 'lamb', else 'linear' (as timm).
    """
    if lr_base_scale not in LR_BASE_SCALES:
        raise ValueError(f"lr_base_scale must be one of {LR_BASE_SCALES}, got {lr_base_scale!r}")
    if not lr_base_scale:
        on = opt.lower()
        lr_base_scale = "sqrt" if any(o in on for o in _SQRT_SCALED_OPT_PARTS) else "linear"
    batch_ratio = global_batch / lr_base_size
    if lr_base_scale == "sqrt":
        batch_ratio = batch_ratio**0.5
    return lr_base * batch_ratio
