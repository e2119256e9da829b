"""Shared helpers for tests against the real timm package: models with randomised BatchNorm (default
statistics hide errors), conversion to mv2jax, seeded inputs, jitted and timm forwards, and `rel_err` (defined
in mv2jax.convert.verify, which `convert_weights.py --verify` applies by the same rule)."""

from __future__ import annotations

import numpy as np
import timm
import torch
from flax import nnx

import mv2jax
from mv2jax.convert import timm_to_mv2jax
from mv2jax.convert.verify import rel_err  # noqa: F401  (the one error measure; tests import it from here)


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running statistics (in place)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=gen)))
    return model


def timm_model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A timm model with seeded random weights and randomised BatchNorm, in eval mode."""
    torch.manual_seed(seed)
    return randomise_batchnorm(timm.create_model(name, **kwargs), seed).eval()


def state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def mv2jax_from_timm(tmodel: torch.nn.Module, name: str, **kwargs):
    """The mv2jax model of `name` holding `tmodel`'s weights (strict load), in eval mode."""
    model = mv2jax.create_model(name, **kwargs)
    return timm_to_mv2jax(state_dict_numpy(tmodel), model).eval()


def random_nhwc(n: int = 2, size: int = 64, seed: int = 0) -> np.ndarray:
    """A seeded standard-normal float32 batch of `n` RGB images, NHWC [n, size, size, 3]."""
    return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


@nnx.jit
def forward(model, x):
    """The mv2jax model's jitted forward (one compilation per variant, mode and batch shape)."""
    return model(x)


def run_timm(tmodel: torch.nn.Module, x_nhwc: np.ndarray, fn=None, dtype=torch.float32):
    """Run `fn(model, x)` (default: forward) in `dtype` on an NHWC numpy batch; outputs as NHWC numpy."""
    import copy

    m = copy.deepcopy(tmodel).to(dtype)
    x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))).to(dtype)
    with torch.no_grad():
        out = (fn or (lambda mod, t: mod(t)))(m, x)
    return to_nhwc(out)


def to_nhwc(out):
    if isinstance(out, (list, tuple)):
        return [to_nhwc(o) for o in out]
    a = out.detach().cpu().numpy()
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a
