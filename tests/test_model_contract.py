"""What the README promises of a model object: a new model is in train mode, as in timm (BatchNorm normalises with
the batch's statistics and updates its running ones; dropout and drop path are active), and a bf16 compute model
keeps float32 parameters and BatchNorm statistics, which a train-mode forward updates in float32."""

from __future__ import annotations

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import timm
from flax import nnx

import mv2jax
from mv2jax.convert import model_variables

NAME = "mobilenetv2_035"


def _batch(n: int = 4, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


def _running(model) -> dict[str, np.ndarray]:
    return {k: np.array(v[...]) for k, v in model_variables(model).items() if "running_" in k}


@nnx.jit
def _forward(model, x):
    return model(x)


def test_a_new_model_is_in_train_mode_like_timm():
    assert timm.create_model(NAME).training  # the reference behaviour
    model = mv2jax.create_model(NAME, drop_rate=0.5, drop_path_rate=0.2)
    x = _batch()
    before = _running(model)
    a, b = np.asarray(_forward(model, x)), np.asarray(_forward(model, x))
    assert not np.allclose(a, b)  # dropout / drop path draw anew on each call
    after = _running(model)
    assert all(not np.array_equal(before[k], after[k]) for k in before)  # every BatchNorm updated its statistics
    # The same weights in eval mode give deterministic outputs that differ from the batch-statistics ones.
    model.eval()
    c, d = np.asarray(_forward(model, x)), np.asarray(_forward(model, x))
    np.testing.assert_array_equal(c, d)
    assert _running(model).keys() == after.keys()
    assert all(np.array_equal(after[k], v) for k, v in _running(model).items())  # eval does not update them


def test_bf16_model_keeps_float32_batchnorm_statistics_and_updates_them_in_float32():
    model = mv2jax.create_model(NAME, dtype=jnp.bfloat16)
    variables = model_variables(model)
    assert {str(v[...].dtype) for k, v in variables.items() if "num_batches" not in k} == {"float32"}
    before = _running(model)
    out = _forward(model, _batch())  # a new model is in train mode
    assert out.dtype == jnp.bfloat16
    after = _running(model)
    assert after.keys() == before.keys() and len(after) > 0
    for k, v in after.items():
        assert v.dtype == np.float32, k
        assert not np.array_equal(v, before[k]), k
    # Values that bf16 cannot hold: the statistics were not rounded to bf16 on the way.
    updated = np.concatenate([v.ravel() for v in after.values()])
    assert np.mean(updated != updated.astype(ml_dtypes.bfloat16).astype(np.float32)) > 0.5
