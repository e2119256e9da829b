"""ema_decay / ema_update against timm's ModelEmaV3 on a torch module with BatchNorm (running stats and the
integer num_batches_tracked buffer), stepped as timm's train.py does: update(model, step=num_updates)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from timm.utils import ModelEmaV3

from mv2jax.train.ema import ema_decay, ema_init, ema_update, params_only_mask

N_UPDATES = 6


def tiny_bn_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    )


def state_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "ema_kwargs",
    [
        dict(decay=0.8),
        dict(decay=0.999, use_warmup=True),
        dict(decay=0.95, use_warmup=True, warmup_power=3 / 4, warmup_gamma=2.0, min_decay=0.1),
        dict(decay=0.8, exclude_buffers=True),
    ],
)
def test_ema_matches_timm_model_ema_v3(ema_kwargs):
    model = tiny_bn_model()
    timm_ema = ModelEmaV3(model, **ema_kwargs)
    ema = ema_init({k: jnp.asarray(v) for k, v in state_numpy(model).items()})
    mask = None
    if ema_kwargs.get("exclude_buffers"):
        params = {n for n, _ in model.named_parameters()}
        mask = {k: k in params for k in ema}
    decay_args = dict(
        decay=ema_kwargs["decay"],
        warmup=ema_kwargs.get("use_warmup", False),
        **{k: ema_kwargs[k] for k in ("warmup_power", "warmup_gamma", "min_decay") if k in ema_kwargs},
    )
    update = jax.jit(ema_update)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(1)
    for num_updates in range(1, N_UPDATES + 1):  # train.py: num_updates += 1 before model_ema.update
        loss = model(torch.randn(8, 3, 6, 6, generator=gen)).square().mean()  # train mode: BN stats move
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        timm_ema.update(model, step=num_updates)
        new = {k: jnp.asarray(v) for k, v in state_numpy(model).items()}
        ema = update(ema, new, ema_decay(num_updates, **decay_args), mask)
        expected = state_numpy(timm_ema.module)
        for k, v in expected.items():
            assert ema[k].dtype == (jnp.int32 if v.dtype == np.int64 else v.dtype), k
            np.testing.assert_allclose(np.asarray(ema[k]), v, rtol=2e-7, atol=1e-8, err_msg=k)
    assert int(ema["1.num_batches_tracked"]) == N_UPDATES  # integer buffer copied, not averaged


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(decay=0.9999),
        dict(decay=0.9999, use_warmup=True),
        dict(decay=0.99, use_warmup=True, warmup_power=0.75),
        dict(decay=0.999, use_warmup=True, update_after_step=5, min_decay=0.3, warmup_gamma=3.0),
    ],
)
def test_ema_decay_equals_timm_get_decay(kwargs):
    timm_ema = ModelEmaV3(torch.nn.Linear(1, 1), **kwargs)
    ours = dict(kwargs)
    ours["warmup"] = ours.pop("use_warmup", False)
    steps = list(range(0, 60)) + [1000, 10**6]
    expected = [timm_ema.get_decay(s) for s in steps]
    assert [ema_decay(s, **ours) for s in steps] == pytest.approx(expected, rel=1e-15, abs=0)
    traced = jax.jit(jax.vmap(lambda s: ema_decay(s, **ours)))(jnp.asarray(steps))
    np.testing.assert_allclose(np.asarray(traced), expected, rtol=1e-6, atol=1e-7)
    assert ema_decay(None, **ours) == timm_ema.get_decay(None)


def test_params_only_mask_marks_nnx_params_not_batch_stats():
    class BN(nnx.Module):  # the variable kinds of nnx.BatchNorm, without its initialisers
        def __init__(self):
            self.scale, self.bias = nnx.Param(jnp.zeros(3)), nnx.Param(jnp.zeros(3))
            self.mean, self.var = nnx.BatchStat(jnp.zeros(3)), nnx.BatchStat(jnp.zeros(3))

    state = nnx.state(BN())
    mask = params_only_mask(state)
    flat = {k[-1]: v.get_value() for k, v in nnx.to_flat_state(mask)}
    assert flat == {"scale": True, "bias": True, "mean": False, "var": False}
    new = jax.tree.map(lambda x: x + 1.0, state)
    out = ema_update(ema_init(state), new, 0.5, mask)
    np.testing.assert_allclose(out["scale"].get_value(), 0.5)  # averaged: 0.5 * 0 + 0.5 * 1
    np.testing.assert_allclose(out["mean"].get_value(), 1.0)  # copied
