"""The LiteRT artifact (mv2jax -> timm -> litert-torch), run by the LiteRT interpreter: timm parity under the
forward-parity rule. litert-torch is not in the test extra (it downgrades pydantic and typing_extensions), so
this runs where it is installed (`pip install 'mv2jax[litert]'`)."""

from __future__ import annotations

import pytest

from mv2jax.export import load_artifact
from tests.timm_reference import rel_err

pytestmark = pytest.mark.numerics
TOLERANCE_FACTOR = 2.0


def test_tflite_logits_in_the_litert_interpreter_within_twice_timm_fp32_error(variants, tmp_path):
    pytest.importorskip("litert_torch")
    v = variants("mobilenetv2_035")
    sidecar = v.export(tmp_path / "m.tflite", "tflite", batch_size=len(v.x))
    assert sidecar["layout"] == "nchw" and sidecar["batch_size"] == len(v.x)
    run, _ = load_artifact(tmp_path / "m.tflite")
    ours, timm_own = rel_err(run(v.x), v.ref64), rel_err(v.ref32, v.ref64)
    assert ours <= TOLERANCE_FACTOR * timm_own, f"LiteRT error {ours:.2e} > {TOLERANCE_FACTOR} x timm's {timm_own:.2e}"
