"""The 'cpu' backend's primitives and hand-written gradients equal JAX's autodiff of the 'xla' backend's
(lax convolutions, textbook BatchNorm), in float64, for odd and even sizes, strides 1 and 2."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mv2jax.models.backends import cpu, xla
from mv2jax.models.backends.cpu import depthwise_conv

pytestmark = pytest.mark.numerics

TOL = 1e-12  # float64; measured 0 to ~1e-15 relative


def _rel(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def _grads(f, args, cotangent_seed=0):
    """Gradients of <f(args), c> wrt every arg for a fixed random cotangent c."""
    out = f(*args)
    c = jnp.asarray(np.random.default_rng(cotangent_seed).standard_normal(out.shape))
    return out, jax.grad(lambda *a: jnp.sum(f(*a) * c), argnums=tuple(range(len(args))))(*args)


@pytest.mark.parametrize("rows", [False, True], ids=["one-reduce", "row-sums"])
@pytest.mark.parametrize(
    "shape,stride", [((2, 9, 7, 5), 1), ((2, 9, 7, 5), 2), ((3, 8, 10, 4), 2), ((1, 5, 5, 3), 1), ((4, 6, 6, 2), 1)]
)
def test_depthwise_conv_value_and_gradients_equal_lax_conv(shape, stride, rows, monkeypatch):
    # both weight-gradient paths: one reduce (small layers) and sums over rows first (large layers)
    monkeypatch.setattr(cpu, "ROW_SUMS_MIN_ELEMENTS", 0 if rows else cpu.ROW_SUMS_MIN_ELEMENTS)
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        x = jnp.asarray(rng.standard_normal(shape))
        w = jnp.asarray(rng.standard_normal((3, 3, shape[-1])))

        out, grads = _grads(lambda x, w: cpu.conv2d(x, w[:, :, None, :], stride, 1, shape[-1]), (x, w))
        ref_out, ref_grads = _grads(lambda x, w: xla.conv2d(x, w[:, :, None, :], stride, 1, shape[-1]), (x, w))
        assert out.shape == ref_out.shape
        assert _rel(out, ref_out) <= TOL
        assert all(_rel(g, r) <= TOL for g, r in zip(grads, ref_grads, strict=True))


@pytest.mark.parametrize("shape,stride", [((2, 9, 7, 3), 2), ((2, 8, 8, 3), 2), ((1, 6, 5, 4), 1)])
def test_dense_conv_im2col_value_and_gradients_equal_lax_conv(shape, stride):
    """The 'cpu' backend runs a dense k x k convolution (the stem) as im2col patches and a matmul."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(4)
        x = jnp.asarray(rng.standard_normal(shape))
        w = jnp.asarray(rng.standard_normal((3, 3, shape[-1], 5)))
        out, grads = _grads(lambda x, w: cpu.conv2d(x, w, stride, 1, 1), (x, w))
        ref_out, ref_grads = _grads(lambda x, w: xla.conv2d(x, w, stride, 1, 1), (x, w))
        assert out.shape == ref_out.shape
        assert _rel(out, ref_out) <= TOL
        assert all(_rel(g, r) <= TOL for g, r in zip(grads, ref_grads, strict=True))


def test_pointwise_conv_value_and_gradients_equal_lax_conv():
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        x, w = jnp.asarray(rng.standard_normal((2, 5, 3, 6))), jnp.asarray(rng.standard_normal((6, 4)))
        out, grads = _grads(lambda x, w: cpu.conv2d(x, w[None, None], 1, 0, 1), (x, w))
        ref_out, ref_grads = _grads(lambda x, w: xla.conv2d(x, w[None, None], 1, 0, 1), (x, w))
        assert _rel(out, ref_out) <= TOL
        assert all(_rel(g, r) <= TOL for g, r in zip(grads, ref_grads, strict=True))


@pytest.mark.parametrize("act", ["relu6", "relu", None])
def test_batch_norm_train_statistics_and_gradients_equal_autodiff(act):
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        xg = jnp.asarray(rng.standard_normal((2, 3, 5, 4, 6)) * 3 + 1)  # 2 stat groups, values past 0 and 6
        w, b = jnp.asarray(rng.standard_normal(6)), jnp.asarray(rng.standard_normal(6) + 2)
        shift = jnp.asarray(rng.standard_normal(6))  # a running mean: must not change the result or gradients
        ours, theirs = (
            cpu.batch_norm_train(xg, w, b, shift, 1e-5, act),
            xla.batch_norm_train(xg, w, b, shift, 1e-5, act),
        )
        assert all(_rel(a, r) <= TOL for a, r in zip(ours, theirs, strict=True))
        _, grads = _grads(lambda x, w, b: cpu.batch_norm_train(x, w, b, shift, 1e-5, act)[0], (xg, w, b))
        _, ref_grads = _grads(lambda x, w, b: xla.batch_norm_train(x, w, b, shift, 1e-5, act)[0], (xg, w, b))
        assert all(_rel(g, r) <= TOL for g, r in zip(grads, ref_grads, strict=True))


@pytest.mark.parametrize("rows", [False, True], ids=["one-reduce", "row-sums"])
def test_bf16_depthwise_weight_gradient_accumulates_in_float32(rows, monkeypatch):
    monkeypatch.setattr(cpu, "ROW_SUMS_MIN_ELEMENTS", 0 if rows else cpu.ROW_SUMS_MIN_ELEMENTS)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((4, 32, 32, 8)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((3, 3, 8)), jnp.bfloat16)
    c = jnp.asarray(rng.standard_normal((4, 32, 32, 8)), jnp.bfloat16)
    dw = jax.grad(lambda w: jnp.sum((depthwise_conv(x, w, 1, 1) * c).astype(jnp.float32)))(w)
    ref = jax.grad(lambda w: jnp.sum(depthwise_conv(x.astype(jnp.float32), w, 1, 1) * c.astype(jnp.float32)))(
        w.astype(jnp.float32)
    )
    assert dw.dtype == jnp.bfloat16
    # sums of 4096 products: float32 accumulation then one bf16 rounding is within 2^-8 (measured 1.2e-3);
    # accumulating in bf16 is off by 2.4e-2
    assert _rel(dw.astype(jnp.float32), ref) <= 8e-3
