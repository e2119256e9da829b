"""create_schedule / scheduled_epochs / scale_lr against timm's create_scheduler_v2 driven exactly as timm's
train.py drives it (initial step on resume, step_update after every update, step(epoch + 1) at epoch end)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from timm.scheduler import create_scheduler_v2

from mv2jax.train.schedules import create_schedule, scale_lr, scheduled_epochs

LR = 0.048
# (name, config): every run is short (<= 64 epochs x 3 updates); lr per update compared at every update
CONFIGS = {
    "step_epoch_warmup": dict(sched="step", epochs=7, decay_epochs=2, decay_rate=0.5, warmup_epochs=2),
    "step_epoch_warmup_prefix": dict(
        sched="step", epochs=7, decay_epochs=2.4, decay_rate=0.5, warmup_epochs=2, warmup_prefix=True
    ),
    "step_update_warmup": dict(
        sched="step", epochs=7, decay_epochs=2.4, decay_rate=0.5, warmup_epochs=2, sched_on_updates=True
    ),
    "step_update_prefix_cooldown": dict(
        sched="step",
        epochs=7,
        decay_epochs=0.7,
        decay_rate=0.9,
        warmup_epochs=1,
        warmup_prefix=True,
        cooldown_epochs=2,
        sched_on_updates=True,
    ),
    # the RA recipe's schedule (decay every 2.4 epochs by .97, per epoch): in float32, 36 // 2.4 is 15, in timm's
    # float64 it is 14 -- the traced path must still agree at epochs 36 and 60
    "step_epoch_ra_like": dict(sched="step", epochs=64, decay_epochs=2.4, decay_rate=0.97, warmup_epochs=5),
    "step_update_ra_like": dict(
        sched="step", epochs=30, decay_epochs=2.4, decay_rate=0.97, warmup_epochs=5, sched_on_updates=True
    ),
    "step_epoch_resume": dict(sched="step", epochs=7, decay_epochs=2, decay_rate=0.5, warmup_epochs=2, start_epoch=3),
    "cosine_epoch_warmup_cooldown": dict(sched="cosine", epochs=7, warmup_epochs=2, min_lr=1e-5, cooldown_epochs=2),
    "cosine_epoch_prefix_cooldown": dict(
        sched="cosine", epochs=7, warmup_epochs=2, warmup_prefix=True, min_lr=1e-5, cooldown_epochs=2
    ),
    "cosine_epoch_plain": dict(sched="cosine", epochs=7),
    "cosine_update_warmup_cooldown": dict(
        sched="cosine", epochs=7, warmup_epochs=2, min_lr=1e-5, cooldown_epochs=1, sched_on_updates=True
    ),
    "cosine_update_prefix": dict(
        sched="cosine", epochs=7, warmup_epochs=1, warmup_prefix=True, cooldown_epochs=2, sched_on_updates=True
    ),
    "cosine_update_resume": dict(
        sched="cosine", epochs=7, warmup_epochs=2, min_lr=1e-6, sched_on_updates=True, start_epoch=2
    ),
    "constant_epoch_warmup": dict(sched="constant", epochs=7, warmup_epochs=3),
}
STEPS_PER_EPOCH = 3


def timm_lrs(cfg: dict, steps_per_epoch: int) -> tuple[list[float], int, int]:
    """lr used by each update of a timm train.py run, timm's num_epochs, and the start epoch."""
    cfg = dict(cfg)
    start_epoch = cfg.pop("start_epoch", 0)
    on_updates = cfg.pop("sched_on_updates", False)
    cfg.setdefault("warmup_lr", 1e-4)
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=LR)
    sched, num_epochs = create_scheduler_v2(
        optimizer, num_epochs=cfg.pop("epochs"), step_on_epochs=not on_updates, updates_per_epoch=steps_per_epoch, **cfg
    )
    if start_epoch > 0:  # train.py on resume
        if on_updates:
            sched.step_update(start_epoch * steps_per_epoch)
        else:
            sched.step(start_epoch)
    lrs = []
    for epoch in range(start_epoch, num_epochs):  # train.py main loop + train_one_epoch
        num_updates = epoch * steps_per_epoch
        for _ in range(steps_per_epoch):
            lrs.append(optimizer.param_groups[0]["lr"])
            num_updates += 1
            sched.step_update(num_updates=num_updates, metric=0.0)
        sched.step(epoch + 1, 0.0)
    return lrs, num_epochs, start_epoch


def ours(cfg: dict):
    cfg = dict(cfg)
    cfg.pop("start_epoch", None)
    cfg.setdefault("warmup_lr", 1e-4)
    return create_schedule(lr=LR, steps_per_epoch=STEPS_PER_EPOCH, **cfg)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_lr_of_every_update_equals_timm_train_py(name):
    cfg = CONFIGS[name]
    expected, num_epochs, start_epoch = timm_lrs(cfg, STEPS_PER_EPOCH)
    schedule = ours(cfg)
    first = start_epoch * STEPS_PER_EPOCH
    steps = range(first, first + len(expected))
    got = [schedule(s) for s in steps]
    assert all(isinstance(v, float) for v in got)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    # traced path (float32 under jit) gives the same lrs to float32 rounding
    traced = jax.jit(jax.vmap(schedule))(jnp.arange(first, first + len(expected)))
    np.testing.assert_allclose(np.asarray(traced), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_scheduled_epochs_equals_timm_num_epochs(name):
    cfg = dict(CONFIGS[name])
    _, num_epochs, _ = timm_lrs(cfg, STEPS_PER_EPOCH)
    keys = ("sched", "epochs", "warmup_epochs", "warmup_prefix", "cooldown_epochs", "sched_on_updates")
    assert scheduled_epochs(steps_per_epoch=STEPS_PER_EPOCH, **{k: cfg[k] for k in keys if k in cfg}) == num_epochs


def test_cosine_per_update_num_epochs_floors_like_timm():
    # 7 epochs x 4 updates + 1 warmup prefix epoch + 2 cooldown epochs, with an uneven updates/epoch
    cfg = dict(sched="cosine", epochs=7, warmup_epochs=1, warmup_prefix=True, cooldown_epochs=2, sched_on_updates=True)
    _, num_epochs, _ = timm_lrs(cfg, 4)
    assert scheduled_epochs(steps_per_epoch=4, **cfg) == num_epochs


def test_unknown_schedule_raises():
    with pytest.raises(ValueError):
        create_schedule("tanh", lr=0.1, epochs=3, steps_per_epoch=2)


@pytest.mark.parametrize(
    "opt,scale,expected_ratio",
    [
        ("rmsproptf", "", 768 / 256),
        ("sgd", "", 768 / 256),
        ("adamw", "", (768 / 256) ** 0.5),
        ("lamb", "", (768 / 256) ** 0.5),
        ("adamw", "linear", 768 / 256),
        ("sgd", "sqrt", (768 / 256) ** 0.5),
    ],
)
def test_scale_lr_like_train_py(opt, scale, expected_ratio):
    # train.py: global batch = batch_size * world_size * grad_accum_steps = 384 * 2 * 1
    assert scale_lr(0.1, 256, 384 * 2, scale, opt=opt) == pytest.approx(0.1 * expected_ratio, rel=1e-15)
