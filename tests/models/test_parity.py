"""Forward parity with timm for every variant, both conv implementations, square and odd non-square inputs.

Yardstick: timm run in float64. mv2jax's float32 error against it (max|diff| / max|ref|) must not exceed
twice timm's own float32 error against the same float64 reference. BatchNorm affine parameters and running
statistics are randomised (defaults would hide errors in their handling).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
from flax import nnx

import mv2jax
from mv2jax.models.backends import BACKENDS
from tests.timm_reference import mv2jax_from_timm, rel_err, state_dict_numpy, timm_model, to_nhwc

pytestmark = pytest.mark.numerics

TOLERANCE_FACTOR = 2.0  # mv2jax fp32 error <= 2x timm's own fp32 error, both against timm float64
SIZES = {"224": (2, 224, 224), "odd": (3, 97, 61)}


def _timm_outputs(tmodel, tfeat, x, dtype):
    """logits, unpooled features, pre-logits and the features_only maps of timm, as NHWC numpy.

    The trunk runs once, in timm's features_only model; timm's own head modules (`conv_head`, `bn2`,
    `forward_head`) finish it: the same operations as `tmodel.forward_features` + `forward_head`."""
    tmodel, tfeat = copy.deepcopy(tmodel).to(dtype), copy.deepcopy(tfeat).to(dtype)
    with torch.no_grad():
        maps = tfeat(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(dtype))
        features = tmodel.bn2(tmodel.conv_head(maps[-1]))
        outs = [tmodel.forward_head(features), features, tmodel.forward_head(features, pre_logits=True)]
    logits, features, pre_logits = to_nhwc(outs)
    return {"logits": logits, "features": features, "pre_logits": pre_logits, "feature_maps": to_nhwc(maps)}


@nnx.jit
def _mv2jax_outputs(model, feat_model, x):
    features = model.forward_features(x)
    return {
        "logits": model.forward_head(features),
        "features": features,
        "pre_logits": model.forward_head(features, pre_logits=True),
        "feature_maps": feat_model(x),
    }


@pytest.fixture(scope="module")
def references():
    """(name, size) -> (timm model, features model, input, float64 outputs, float32 outputs); built lazily."""
    cache = {}

    def get(name, size):
        if (name, size) not in cache:
            cache.clear()  # keep one variant's references alive at a time
            tmodel = timm_model(name, seed=len(name))
            tfeat = timm.create_model(name, features_only=True).eval()
            tfeat.load_state_dict({k: v for k, v in tmodel.state_dict().items() if k in tfeat.state_dict()})
            x = np.random.default_rng(1).standard_normal((*SIZES[size], 3)).astype(np.float32)
            ref64 = _timm_outputs(tmodel, tfeat, x, torch.float64)
            ref32 = _timm_outputs(tmodel, tfeat, x, torch.float32)
            cache[(name, size)] = (tmodel, x, ref64, ref32)
        return cache[(name, size)]

    return get


def _errors(outputs, ref64):
    errs = {}
    for key, ref in ref64.items():
        if key == "feature_maps":
            assert len(outputs[key]) == len(ref) == 5
            for i, (a, r) in enumerate(zip(outputs[key], ref, strict=True)):
                errs[f"feature_map{i}"] = rel_err(a, r)
        else:
            errs[key] = rel_err(outputs[key], ref)
    return errs


@pytest.mark.parametrize("conv_impl", BACKENDS)
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("name", mv2jax.list_models())
def test_forward_fp32_error_within_twice_timm_fp32_error(references, name, size, conv_impl):
    tmodel, x, ref64, ref32 = references(name, size)
    model = mv2jax_from_timm(tmodel, name, conv_impl=conv_impl)
    feat_model = mv2jax.create_model(name, features_only=True, conv_impl=conv_impl)
    mv2jax.convert.timm_to_mv2jax(
        {k: v for k, v in state_dict_numpy(tmodel).items() if not k.startswith(("conv_head", "bn2", "classifier"))},
        feat_model,
    )
    ours = _errors(_mv2jax_outputs(model, feat_model.eval(), x), ref64)
    timm_own = _errors(ref32, ref64)
    too_big = {k: (f"{ours[k]:.2e}", f"{timm_own[k]:.2e}") for k in ours if ours[k] > TOLERANCE_FACTOR * timm_own[k]}
    assert not too_big, f"mv2jax error above {TOLERANCE_FACTOR}x timm's own fp32 error (ours, timm's): {too_big}"
    assert max(ours.values()) < 1e-3  # and never far from timm in absolute terms
