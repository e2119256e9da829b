"""The BatchNorm-folded inference network (`fuse_for_inference`): timm parity, equality with the module, how the
backend runs a batch (the 'cpu' backend's loop over groups of images), pooling options, dtypes and errors.

Parity yardstick as in test_parity.py: timm run in float64; the fused float32 logits' error against it must not
exceed twice timm's own float32 error (BN affine and running statistics randomised, so folding them matters).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import mv2jax
from mv2jax.models import fuse_for_inference
from mv2jax.models.backends import cpu
from mv2jax.models.backends.cpu import chunked
from tests.timm_reference import forward, mv2jax_from_timm, random_nhwc, rel_err, run_timm, timm_model

pytestmark = pytest.mark.numerics

TOLERANCE_FACTOR = 2.0
SHAPES = {"224": (2, 224, 224), "odd": (3, 97, 61)}
# fused vs module: two float32 roundings of the same maths (each within 2x timm's fp32 error of float64, tested
# above; measured up to 8e-6 apart). A wrong fold, bias or pooling is off by ~1e-1.
MODULE_TOLERANCE = 2e-5


@pytest.fixture(scope="module")
def timm_references():
    cache = {}

    def get(name, shape):
        if (name, shape) not in cache:
            tmodel = timm_model(name, seed=3)
            x = np.random.default_rng(2).standard_normal((*SHAPES[shape], 3)).astype(np.float32)
            cache[(name, shape)] = (
                tmodel,
                x,
                run_timm(tmodel, x, dtype=torch.float64),
                run_timm(tmodel, x, dtype=torch.float32),
            )
        return cache[(name, shape)]

    return get


@pytest.mark.parametrize("conv_impl", ["cpu", "xla"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", ["mobilenetv2_100", "mobilenetv2_110d"])
def test_fused_logits_fp32_error_within_twice_timm_fp32_error(timm_references, name, shape, conv_impl):
    tmodel, x, ref64, ref32 = timm_references(name, shape)
    fused = fuse_for_inference(mv2jax_from_timm(tmodel, name, conv_impl=conv_impl))
    ours, timm_own = rel_err(fused(x), ref64), rel_err(ref32, ref64)
    assert ours <= TOLERANCE_FACTOR * timm_own, f"fused error {ours:.2e} > {TOLERANCE_FACTOR} x timm's {timm_own:.2e}"


@pytest.mark.parametrize("shape", list(SHAPES))
def test_expansion_on_the_padded_grid_keeps_timm_parity_on_every_grid(timm_references, shape, monkeypatch):
    """The expansion matmul with the depthwise padding and the bias folded in (used on the large grids), here on
    every grid, odd and stride-2 ones included."""
    monkeypatch.setattr(cpu, "PAD_INTO_EXPAND_MIN_POSITIONS", 0)
    tmodel, x, ref64, ref32 = timm_references("mobilenetv2_100", shape)
    fused = fuse_for_inference(mv2jax_from_timm(tmodel, "mobilenetv2_100", conv_impl="cpu"))
    assert "concatenate" in jax.jit(fused.apply).lower(fused.params, jnp.asarray(x)).as_text()  # the path ran
    ours, timm_own = rel_err(fused(x), ref64), rel_err(ref32, ref64)
    assert ours <= TOLERANCE_FACTOR * timm_own, f"fused error {ours:.2e} > {TOLERANCE_FACTOR} x timm's {timm_own:.2e}"


@pytest.fixture(scope="module")
def model_035():
    return mv2jax_from_timm(timm_model("mobilenetv2_035", seed=5), "mobilenetv2_035")


@pytest.mark.parametrize("batch, chunk", [(5, 2), (4, 2), (3, 1), (1, 2), (6, 0)])
def test_chunked_batches_equal_the_module_eval_forward(model_035, batch, chunk, monkeypatch):
    monkeypatch.setattr(cpu, "INFERENCE_BATCH_CHUNK", chunk)
    x = random_nhwc(batch, 48, seed=batch)
    fused = fuse_for_inference(model_035)
    assert fused.loops_over_batch(batch) == (0 < chunk < batch)
    out = fused(x)
    assert out.shape == (batch, 1000)
    assert rel_err(out, forward(model_035, x)) < MODULE_TOLERANCE


def test_chunked_pads_a_ragged_batch_and_drops_the_padding():
    x = jnp.arange(5 * 3, dtype=jnp.float32).reshape(5, 3)
    calls = []

    def fn(group):
        calls.append(group.shape)
        return group * 2.0

    np.testing.assert_array_equal(chunked(fn, x, 2), x * 2.0)
    assert calls == [(2, 3)]  # traced once, as the body of the loop over 3 groups


def test_batch_loop_and_compiler_options_follow_the_backend_and_the_device_count(model_035):
    fused = fuse_for_inference(model_035)
    assert fused.loops_over_batch(4) and fused.compiler_options == cpu.INFERENCE_COMPILER_OPTIONS
    assert "while" in jax.jit(fused.apply).lower(fused.params, jnp.zeros((4, 32, 32, 3))).as_text()
    sharded = fuse_for_inference(model_035, devices=2)  # a loop would cut across the shards: whole batch
    assert not sharded.loops_over_batch(4)
    assert "while" not in jax.jit(sharded.apply).lower(sharded.params, jnp.zeros((4, 32, 32, 3))).as_text()
    xla = fuse_for_inference(mv2jax.create_model("mobilenetv2_035", conv_impl="xla").eval())
    assert not xla.loops_over_batch(4) and xla.compiler_options is None


@pytest.mark.parametrize("num_classes, global_pool", [(0, "avg"), (7, "avgmax"), (7, "catavgmax"), (0, "max")])
def test_heads_and_pools_match_the_module(num_classes, global_pool):
    model = mv2jax.create_model("mobilenetv2_035", num_classes=num_classes, global_pool=global_pool, seed=1).eval()
    x = random_nhwc(2, 40, seed=4)
    out = fuse_for_inference(model)(x)
    ref = forward(model, x)
    assert out.shape == ref.shape
    assert rel_err(out, ref) < MODULE_TOLERANCE


def test_apply_is_pure_and_jittable_with_new_params(model_035):
    fused = fuse_for_inference(model_035)
    x = jnp.asarray(random_nhwc(2, 32, seed=9))
    shifted = dict(fused.params, classifier=dict(fused.params["classifier"]))
    shifted["classifier"]["bias"] = fused.params["classifier"]["bias"] + 1.0
    out = jax.jit(fused.apply, compiler_options=fused.compiler_options)(shifted, x)
    np.testing.assert_allclose(out, fused(x) + 1.0, rtol=0, atol=1e-5)
    np.testing.assert_allclose(fused.apply(shifted, x), out, rtol=0, atol=1e-5)


def test_bfloat16_compute_model_is_close_to_float32():
    model32 = mv2jax.create_model("mobilenetv2_035", seed=2).eval()
    model16 = mv2jax.create_model("mobilenetv2_035", seed=2, dtype=jnp.bfloat16).eval()
    x = random_nhwc(2, 48, seed=6)
    out16 = fuse_for_inference(model16)(x)
    assert out16.dtype == jnp.bfloat16
    assert rel_err(out16, fuse_for_inference(model32)(x)) < 5e-2


def test_folding_uses_the_running_statistics_not_the_mode():
    model = mv2jax.create_model("mobilenetv2_035", seed=3).train()  # mode does not matter: folding is eval maths
    x = random_nhwc(2, 32, seed=1)
    assert rel_err(fuse_for_inference(model)(x), forward(model.eval(), x)) < MODULE_TOLERANCE


def test_features_only_and_bad_inputs_are_refused_in_one_line():
    with pytest.raises(ValueError, match="features_only"):
        fuse_for_inference(mv2jax.create_model("mobilenetv2_035", features_only=True))
    fused = fuse_for_inference(mv2jax.create_model("mobilenetv2_035").eval())
    with pytest.raises(ValueError, match="looks NCHW"):
        fused(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="float image batch"):
        fused(np.zeros((1, 32, 32, 3), np.uint8))
