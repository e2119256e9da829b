"""The 'xla' backend's one-pass BatchNorm variance on activations whose mean is large against their spread, as in a
trained network: shifted by the running mean it is as accurate as PyTorch's, unshifted (E[x^2] - E[x]^2) it is not.

Yardstick: PyTorch's float32 train-mode batch_norm against float64 on the same input, norms over whole tensors."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch

from mv2jax.models.backends import xla

pytestmark = __import__("pytest").mark.numerics

OFFSET = 300.0  # channel means in units of their standard deviation


def _input() -> tuple[np.ndarray, np.ndarray]:
    """x `[1, 8, 7, 7, 16]` float64 with per-channel means ~OFFSET stds away from 0, and a running mean close to
    the batch mean (what training keeps)."""
    rng = np.random.default_rng(0)
    centre = OFFSET * rng.uniform(0.5, 1.5, 16)
    x = centre + rng.standard_normal((1, 8, 7, 7, 16)) * rng.uniform(0.5, 2.0, 16)
    return x, centre + rng.standard_normal(16) * 0.1


def _rel(a, ref) -> float:
    return float(np.linalg.norm(np.float64(a) - ref) / np.linalg.norm(ref))


def _torch_bn(x: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    t = torch.from_numpy(x[0]).to(dtype).permute(0, 3, 1, 2)  # NHWC -> NCHW
    y = torch.nn.functional.batch_norm(t, None, None, training=True, eps=1e-5)
    return y.permute(0, 2, 3, 1).double().numpy()[None]


def test_one_pass_variance_shifted_by_running_mean_is_as_accurate_as_torch():
    x, running_mean = _input()
    ref = _torch_bn(x, torch.float64)
    yardstick = _rel(_torch_bn(x, torch.float32), ref)
    ones, zeros = jnp.ones(16, jnp.float32), jnp.zeros(16, jnp.float32)
    x32 = jnp.asarray(x, jnp.float32)
    y, _, _ = xla.batch_norm_train(x32, ones, zeros, jnp.asarray(running_mean, jnp.float32), 1e-5, None)
    unshifted, _, _ = xla.batch_norm_train(x32, ones, zeros, zeros, 1e-5, None)
    ours, naive = _rel(y, ref), _rel(unshifted, ref)
    print(f"relative error vs float64: shifted {ours:.2e}, unshifted {naive:.2e}, torch float32 {yardstick:.2e}")
    assert ours <= 2 * yardstick
    assert naive > 2 * yardstick  # the case this guards: without the shift the test fails
