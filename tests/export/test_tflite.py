"""The LiteRT artifact (JAX's StableHLO -> litert-converter), run by the LiteRT interpreter: timm parity under the
forward-parity rule, and the graph's form (LiteRT's own ops, NHWC without transposes, ReLU6 fused). litert-converter
is not in the test extra (it caps typing_extensions below what the rest of the stack asks), so these run where the
`litert` extra is installed; CI runs them in a venv of their own."""

from __future__ import annotations

import pytest

from mv2jax.export import load_artifact
from mv2jax.models import fuse_for_inference
from tests.export.conftest import VARIANTS
from tests.timm_reference import rel_err

pytest.importorskip("litert_converter")
pytestmark = [pytest.mark.numerics, pytest.mark.litert]
TOLERANCE_FACTOR = 2.0


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("name", VARIANTS)
def test_tflite_logits_in_the_litert_interpreter_within_twice_timm_fp32_error(variants, tmp_path, name, layout):
    v = variants(name)
    sidecar = v.export(tmp_path / "m.tflite", "tflite", batch_size=len(v.x), layout=layout)
    assert sidecar["layout"] == layout and sidecar["batch_size"] == len(v.x)
    run, _ = load_artifact(tmp_path / "m.tflite")
    ours, timm_own = rel_err(run(v.x), v.ref64), rel_err(v.ref32, v.ref64)
    assert ours <= TOLERANCE_FACTOR * timm_own, f"LiteRT error {ours:.2e} > {TOLERANCE_FACTOR} x timm's {timm_own:.2e}"


def _ops(path) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    return [op["op_name"] for op in interpreter._get_ops_details()]


def test_tflite_graph_has_litert_convolutions_and_no_transposes(variants, tmp_path):
    v = variants("mobilenetv2_035")
    v.export(tmp_path / "m.tflite", "tflite")
    ops = _ops(tmp_path / "m.tflite")
    spec = fuse_for_inference(v.model).spec
    convs = [spec.stem, *(c for block in spec.blocks for c in block.convs), spec.head]
    assert ops.count("DEPTHWISE_CONV_2D") == sum(c.depthwise for c in convs)
    assert ops.count("CONV_2D") == sum(not c.depthwise for c in convs)
    assert ops.count("ADD") == sum(block.skip for block in spec.blocks) and ops.count("FULLY_CONNECTED") == 1
    # ReLU6 fused into the convolutions; explicit PADs only where PyTorch's symmetric padding is not LiteRT's SAME
    assert set(ops) <= {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "PAD", "MEAN", "FULLY_CONNECTED"}, sorted(set(ops))


def test_nchw_tflite_adds_one_transpose_at_the_input(variants, tmp_path):
    v = variants("mobilenetv2_035")
    v.export(tmp_path / "m.tflite", "tflite", layout="nchw")
    ops = _ops(tmp_path / "m.tflite")
    assert ops.count("TRANSPOSE") == 1 and ops[0] == "TRANSPOSE"
