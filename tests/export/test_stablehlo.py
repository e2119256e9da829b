"""The StableHLO artifact (`jax.export`): timm parity after deserialization (the forward-parity rule, as for
ONNX), lowered for cpu, cuda and tpu in one artifact, one artifact for every batch size unless one is fixed."""

from __future__ import annotations

from pathlib import Path

import jax
import pytest

from mv2jax.export import load_artifact
from mv2jax.export.stablehlo import PLATFORMS
from tests.export.conftest import VARIANTS
from tests.timm_reference import rel_err

pytestmark = pytest.mark.numerics
TOLERANCE_FACTOR = 2.0


@pytest.mark.parametrize("name", VARIANTS)
def test_stablehlo_logits_within_twice_timm_fp32_error(variants, tmp_path, name):
    v = variants(name)
    v.export(tmp_path / "m.shlo", "stablehlo")
    run, sidecar = load_artifact(tmp_path / "m.shlo")
    assert sidecar["layout"] == "nhwc" and sidecar["batch_size"] is None
    for part in (slice(0, 3), slice(2, 3)):  # the same artifact at batch 3 and 1
        ours, timm_own = rel_err(run(v.x[part]), v.ref64[part]), rel_err(v.ref32[part], v.ref64[part])
        assert ours <= TOLERANCE_FACTOR * timm_own, f"error {ours:.2e} > {TOLERANCE_FACTOR} x timm's {timm_own:.2e}"


def test_stablehlo_artifact_is_lowered_for_cpu_cuda_and_tpu_with_a_symbolic_batch(variants, tmp_path):
    variants("mobilenetv2_035").export(tmp_path / "m.shlo", "stablehlo")
    exported = jax.export.deserialize(bytearray(Path(tmp_path / "m.shlo").read_bytes()))
    assert tuple(exported.platforms) == PLATFORMS == ("cpu", "cuda", "tpu")
    batch = exported.in_avals[0].shape[0]
    assert not isinstance(batch, int), f"batch dimension is fixed at {batch}"


def test_stablehlo_fixed_batch_size(variants, tmp_path):
    v = variants("mobilenetv2_035")
    v.export(tmp_path / "m.shlo", "stablehlo", batch_size=3)
    exported = jax.export.deserialize(bytearray(Path(tmp_path / "m.shlo").read_bytes()))
    assert exported.in_avals[0].shape == (3, *v.x.shape[1:])
