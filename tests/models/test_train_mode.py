"""Train mode against timm: one forward/backward (loss, every parameter gradient, updated BN running
statistics), drop path / dropout behaviour.

Exactness is checked in float64 on both sides (a random-weight network in train mode is chaotic: timm's
own float32 gradients differ from its float64 ones by up to ~1e-1 relative), and float32 against the same
yardstick as the forward pass: mv2jax's fp32 error <= 2x timm's own fp32 error, both against timm float64.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import mv2jax
from mv2jax.convert import model_variables, mv2jax_to_timm, timm_to_mv2jax
from mv2jax.models.layers import BatchStatsBuffer
from mv2jax.weights.state_dict import to_timm_layout
from tests.timm_reference import forward, rel_err, state_dict_numpy, timm_model

pytestmark = pytest.mark.numerics

# Float64 yardstick: the network's conditioning amplifies rounding the same way in both precisions, so timm's
# own float32 gradient error (a norm over every gradient at once), scaled by the ratio of the two precisions'
# epsilons (2^-29), is what one float64 computation's rounding gives. Two float64 computations are compared here
# (each rounds), and mv2jax may be twice timm's error: the bound is 2 x 2 x that. A wrong formula is off by many
# orders of magnitude more.
EPS_RATIO = float(np.finfo(np.float64).eps / np.finfo(np.float32).eps)
FP64_FACTOR = 2 * 2
STATS_TOL_FP64 = 1e-10
ZERO_GRAD = 1e-8  # |grad| / max|grad| below this: a gradient that is zero in exact arithmetic


def _timm_step(tmodel, x, y, dtype):
    """Loss, named gradients and the state dict after one train-mode forward/backward of timm."""
    m = copy.deepcopy(tmodel).to(dtype).train()
    out = m(torch.from_numpy(x.transpose(0, 3, 1, 2)).to(dtype))
    loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(y))
    loss.backward()
    grads = {k: p.grad.double().numpy() for k, p in m.named_parameters()}
    return float(loss.detach()), grads, {k: v.double().numpy() for k, v in m.state_dict().items()}


def _mv2jax_step(model, x, y):
    def loss_fn(m):
        logits = m(x)
        return optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32 if logits.dtype != jnp.float64 else jnp.float64), y
        ).mean()

    loss, grads = nnx.jit(nnx.value_and_grad(loss_fn))(model)
    flat = {".".join(map(str, p)): v[...] for p, v in nnx.to_flat_state(grads)}
    return float(loss), {k: to_timm_layout(k, np.asarray(v, np.float64)) for k, v in flat.items()}


def _grad_errors(grads, ref):
    """Per-tensor relative error; tensors whose reference gradient is zero in exact arithmetic (biases of
    BN layers followed only by linear maps and another train-mode BN) are compared against the global scale."""
    scale = max(np.abs(g).max() for g in ref.values())
    errs = {}
    for k, r in ref.items():
        if np.abs(r).max() <= ZERO_GRAD * scale:
            errs[k] = np.abs(grads[k]).max() / scale
        else:
            errs[k] = rel_err(grads[k], r)
    return errs


def _global_error(grads, ref) -> float:
    """||grads - ref|| / ||ref|| over all gradients at once (one vector of every parameter's gradient)."""
    diff = np.sqrt(sum(np.sum(np.square(grads[k] - r)) for k, r in ref.items()))
    return float(diff / np.sqrt(sum(np.sum(np.square(r)) for r in ref.values())))


def _batch(size=64, n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, size, size, 3)).astype(np.float32), rng.integers(0, 1000, n)


@pytest.mark.parametrize(
    "name,conv_impl", [("mobilenetv2_035", "cpu"), ("mobilenetv2_035", "xla"), ("mobilenetv2_110d", "cpu")]
)
def test_train_step_float64_loss_gradients_and_running_stats_equal_timm(name, conv_impl):
    tmodel = timm_model(name, seed=3)
    x, y = _batch()
    loss_ref, grads_ref, state_ref = _timm_step(tmodel, x, y, torch.float64)
    _, grads_timm32, _ = _timm_step(tmodel, x, y, torch.float32)
    bound = FP64_FACTOR * _global_error(grads_timm32, grads_ref) * EPS_RATIO
    with jax.enable_x64(True):
        model = mv2jax.create_model(name, dtype=jnp.float64, param_dtype=jnp.float64, conv_impl=conv_impl)
        timm_to_mv2jax(state_dict_numpy(tmodel.double()), model).train()
        loss, grads = _mv2jax_step(model, x.astype(np.float64), y)
        state = mv2jax_to_timm(model)
    assert abs(loss - loss_ref) <= 1e-12 * abs(loss_ref)
    assert set(grads) == set(grads_ref)
    err = _global_error(grads, grads_ref)
    assert err <= bound, (err, bound, sorted(_grad_errors(grads, grads_ref).items(), key=lambda kv: -kv[1])[:3])
    for k, ref in state_ref.items():
        if k.endswith("num_batches_tracked"):
            assert state[k] == ref, k
        else:
            assert rel_err(state[k], ref) <= STATS_TOL_FP64, k


def test_train_step_float32_error_within_twice_timm_fp32_error():
    name = "mobilenetv2_050"
    tmodel = timm_model(name, seed=4)
    x, y = _batch(seed=1)
    loss64, grads64, state64 = _timm_step(tmodel, x, y, torch.float64)
    loss32, grads32, state32 = _timm_step(tmodel, x, y, torch.float32)
    model = timm_to_mv2jax(state_dict_numpy(tmodel), mv2jax.create_model(name)).train()
    loss, grads = _mv2jax_step(model, x, y)
    state = mv2jax_to_timm(model)
    assert abs(loss - loss64) <= 2 * max(abs(loss32 - loss64), 1e-7 * abs(loss64))
    ours, timm_own = max(_grad_errors(grads, grads64).values()), max(_grad_errors(grads32, grads64).values())
    assert ours <= 2 * timm_own, (ours, timm_own)
    running = [k for k in state64 if "running" in k]
    ours = max(rel_err(state[k], state64[k]) for k in running)
    assert ours <= 2 * max(rel_err(state32[k], state64[k]) for k in running)


def test_train_mode_updates_running_stats_and_eval_mode_does_not():
    model = mv2jax.create_model("mobilenetv2_035")
    before = {k: np.asarray(v[...]) for k, v in model_variables(model).items() if "running" in k}
    x, _ = _batch(size=32, n=2)
    forward(model.eval(), x)
    assert all(np.array_equal(before[k], model_variables(model)[k][...]) for k in before)
    forward(model.train(), x)
    changed = [k for k in before if not np.array_equal(before[k], model_variables(model)[k][...])]
    assert len(changed) == len(before)
    assert int(model.bn1.num_batches_tracked[...]) == 1


@pytest.mark.parametrize("mode", ["mean", "first"])
def test_stats_buffer_moves_running_stats_as_each_layer_does(mode):
    """`BatchStatsBuffer` (the TPU step's): the same running statistics, bit for bit, as the layers' own updates,
    with two stat groups fed by their mean or the first; the layers let go of the buffer after `fold`. Eager: the
    buffer, the forward and `fold` belong in one trace (the train step's) or none."""
    x = jnp.asarray(_batch(size=32, n=4)[0])
    models = [mv2jax.create_model("mobilenetv2_035").train().set_bn_stat_groups(2, mode) for _ in range(2)]
    models[0](x)
    buffer = BatchStatsBuffer(models[1])
    models[1](x)
    buffer.fold()
    own, buffered = (model_variables(m) for m in models)
    stats = [k for k in own if "running" in k or "num_batches" in k]
    assert len(stats) == 3 * len(buffer.layers) == 3 * 52
    for k in stats:
        np.testing.assert_array_equal(own[k][...], buffered[k][...], err_msg=k)
    assert all(layer.stats_buffer is None for layer in buffer.layers)
    assert not np.array_equal(own["bn1.running_mean"][...], np.zeros(16))


def test_stats_buffer_refuses_more_channels_than_it_holds():
    model = mv2jax.create_model("mobilenetv2_035").train()
    buffer = BatchStatsBuffer(model)
    stats = jnp.zeros((1, buffer.size + 1))
    with pytest.raises(ValueError, match="overflow"):
        buffer.write(buffer.layers[0], stats, stats)


def test_drop_path_rates_follow_timm_per_block_schedule_and_only_on_residual_blocks():
    import timm

    tmodel = timm.create_model("mobilenetv2_100", drop_path_rate=0.2)
    model = mv2jax.create_model("mobilenetv2_100", drop_path_rate=0.2)
    for i, stage in enumerate(model.blocks):
        for j, block in enumerate(stage):
            tblock = tmodel.blocks[i][j]
            ref = tblock.drop_path.drop_prob if tblock.has_skip and hasattr(tblock.drop_path, "drop_prob") else None
            ours = block.drop_path.rate if block.drop_path is not None else None
            assert ours == pytest.approx(ref) if ref is not None else ours is None, (i, j)


def test_drop_path_and_dropout_are_random_in_train_mode_and_off_in_eval():
    model = mv2jax.create_model("mobilenetv2_035", drop_rate=0.5, drop_path_rate=0.5)
    x, _ = _batch(size=32, n=8)
    model.eval()
    a, b = forward(model, x), forward(model, x)
    np.testing.assert_array_equal(a, b)
    model.train()
    c, d = forward(model, x), forward(model, x)
    assert not np.allclose(c, d)
    # Dropout scales the kept units by 1/(1-p): the expectation is unchanged (checked on the head alone).
    feats = jnp.ones((4096, model.num_features))
    pooled = model.head_drop(feats)
    assert float(jnp.mean(pooled)) == pytest.approx(1.0, abs=0.03)
    assert float(jnp.mean(pooled == 0)) == pytest.approx(0.5, abs=0.03)
