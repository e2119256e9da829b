"""The ONNX artifact: timm parity in ONNX Runtime (the forward-parity rule: its float32 error against timm in
float64 at most 2x timm's own float32 error, measured here on the same input), and the graph's form: NCHW without
per-layer transposes, depthwise layers as grouped convolutions, a symbolic or fixed batch."""

from __future__ import annotations

import onnx
import pytest
import torch

from mv2jax.export import data_config, export, load_artifact
from mv2jax.models import fuse_for_inference
from tests.export.conftest import IMG_SIZE, VARIANTS
from tests.timm_reference import mv2jax_from_timm, random_nhwc, rel_err, run_timm, timm_model

pytestmark = pytest.mark.numerics
TOLERANCE_FACTOR = 2.0


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("name", VARIANTS)
def test_onnx_logits_in_onnxruntime_within_twice_timm_fp32_error(variants, tmp_path, name, layout):
    v = variants(name)
    v.export(tmp_path / "m.onnx", "onnx", layout=layout)
    run, sidecar = load_artifact(tmp_path / "m.onnx")
    assert sidecar["layout"] == layout
    ours, timm_own = rel_err(run(v.x), v.ref64), rel_err(v.ref32, v.ref64)
    assert ours <= TOLERANCE_FACTOR * timm_own, f"ONNX error {ours:.2e} > {TOLERANCE_FACTOR} x timm's {timm_own:.2e}"


def _graph(variants, tmp_path, **kwargs) -> tuple[onnx.GraphProto, object]:
    v = variants("mobilenetv2_035")
    v.export(tmp_path / "m.onnx", "onnx", **kwargs)
    return onnx.load(tmp_path / "m.onnx").graph, v


def test_onnx_graph_is_nchw_with_no_transposes_and_grouped_depthwise_convs(variants, tmp_path):
    graph, v = _graph(variants, tmp_path)
    assert "Transpose" not in [n.op_type for n in graph.node]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, IMG_SIZE, IMG_SIZE]
    weights = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    groups = [({a.name: a.i for a in n.attribute}["group"], weights[n.input[1]].shape) for n in convs]
    spec = fuse_for_inference(v.model).spec
    depthwise = [c.depthwise for c in [spec.stem, *(c for block in spec.blocks for c in block.convs), spec.head]]
    assert len(groups) == len(depthwise)
    for (group, shape), is_depthwise in zip(groups, depthwise, strict=True):  # group == channels, one input each
        assert (group, shape[1]) == ((shape[0], 1) if is_depthwise else (1, shape[1])), (group, shape)


def test_nhwc_layout_adds_one_transpose_at_the_input(variants, tmp_path):
    graph, _ = _graph(variants, tmp_path, layout="nhwc")
    transposes = [n for n in graph.node if n.op_type == "Transpose"]
    assert len(transposes) == 1 and list(transposes[0].input) == ["input"]
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == [IMG_SIZE, IMG_SIZE, 3]


def test_fixed_batch_size_is_in_the_graph_and_the_sidecar(variants, tmp_path):
    graph, v = _graph(variants, tmp_path, batch_size=3)
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3
    run, sidecar = load_artifact(tmp_path / "m.onnx")
    assert sidecar["batch_size"] == 3 and run(v.x).shape == (3, 1000)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        run(v.x[:2])


def test_dynamic_batch_runs_any_batch_size(variants, tmp_path):
    v = variants("mobilenetv2_035")
    v.export(tmp_path / "m.onnx", "onnx")
    run, _ = load_artifact(tmp_path / "m.onnx")
    for part in (slice(0, 1), slice(0, 3)):
        ours, timm_own = rel_err(run(v.x[part]), v.ref64[part]), rel_err(v.ref32[part], v.ref64[part])
        assert ours <= TOLERANCE_FACTOR * timm_own


@pytest.mark.parametrize(
    "num_classes, global_pool, layout",
    [(7, "avgmax", "nchw"), (7, "catavgmax", "nhwc"), (0, "max", "nchw"), (0, "", "nchw"), (0, "", "nhwc")],
)
def test_every_timm_head_exports_within_twice_timm_fp32_error(tmp_path, num_classes, global_pool, layout):
    name = "mobilenetv2_035"
    tmodel = timm_model(name, seed=5, num_classes=num_classes, global_pool=global_pool)
    model = mv2jax_from_timm(tmodel, name, num_classes=num_classes, global_pool=global_pool)
    export(model, tmp_path / "m.onnx", "onnx", data_config(model, IMG_SIZE), name=name, layout=layout)
    run, _ = load_artifact(tmp_path / "m.onnx")
    x = random_nhwc(2, IMG_SIZE, seed=6)
    ref64, ref32 = (run_timm(tmodel, x, dtype=dtype) for dtype in (torch.float64, torch.float32))
    ours = run(x)  # an unpooled map comes back NHWC, as run_timm returns timm's
    assert ours.shape == ref64.shape
    assert rel_err(ours, ref64) <= TOLERANCE_FACTOR * rel_err(ref32, ref64)
