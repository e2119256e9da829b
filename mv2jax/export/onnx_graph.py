"""ONNX: the BN-folded network written as an NCHW graph with the `onnx` package, straight from the folded spec and
parameters: Conv (with `group` = channels for depthwise layers) + Clip(0, 6) for ReLU6 per layer, Add for
residuals, timm's global pooling (`mv2jax.models.pooling`'s table built from GlobalAveragePool, GlobalMaxPool,
Add, Mul and Concat), Flatten, Gemm. The weights are the folded float32 arrays (HWIO -> OIHW), so the graph
is exact and has no per-layer transposes.

Input `input`: float32 `[batch, 3, H, W]` (NCHW, normalised as the sidecar says), `batch` symbolic unless a batch
size is fixed; with layout 'nhwc' the input is `[batch, H, W, 3]` and one Transpose at the graph input makes it
NCHW. Output `logits`: `[batch, num_classes]`; without a classifier the pooled features, or with
`global_pool=''` the unpooled feature map in the input's layout (`[batch, C, h, w]` for 'nchw').
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mv2jax.models import FusedMobileNetV2, MobileNetV2, fuse_for_inference
from mv2jax.models.pooling import GLOBAL_POOLS

OPSET = 17
LAYOUTS = ("nchw", "nhwc")
ACTIVATIONS = {"relu6": ("Clip", "zero", "six"), "relu": ("Relu",)}  # op type, then its constant inputs
GLOBAL_REDUCTIONS = {"avg": "GlobalAveragePool", "max": "GlobalMaxPool"}  # NCHW -> [N, C, 1, 1]


def onnx_model(fused: FusedMobileNetV2, img_size: tuple[int, int], batch_size: int | None, layout: str = "nchw"):
    """The `onnx.ModelProto` of `fused` for `img_size` (H, W) inputs, a fixed `batch_size` or a symbolic batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    spec, params = fused.spec, fused.params
    nodes, inits = [], [numpy_helper.from_array(np.float32(0), "zero"), numpy_helper.from_array(np.float32(6), "six")]

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(np.asarray(value, np.float32)), name))
        return name

    def op(kind: str, inputs: list[str], **attrs) -> str:
        out = f"{kind.lower()}{len(nodes)}"
        nodes.append(helper.make_node(kind, inputs, [out], name=out, **attrs))
        return out

    def conv(x: str, p, c, name: str) -> str:
        w = np.asarray(p["weight"], np.float32).transpose(3, 2, 0, 1)  # HWIO -> OIHW ([C, 1, k, k] if depthwise)
        y = op(
            "Conv",
            [x, const(f"{name}.weight", w), const(f"{name}.bias", p["bias"])],
            kernel_shape=[c.kernel_size] * 2,
            strides=[c.stride] * 2,
            pads=[c.padding] * 4,
            group=w.shape[0] if c.depthwise else 1,
        )
        if c.act is None:
            return y
        if c.act not in ACTIVATIONS:
            raise ValueError(f"activation {c.act!r} has no ONNX export yet (only {', '.join(ACTIVATIONS)})")
        return op(ACTIVATIONS[c.act][0], [y, *ACTIVATIONS[c.act][1:]])

    def pool(x: str) -> str:  # timm's SelectAdaptivePool2d(flatten=True); no reductions keep the map
        pooling = GLOBAL_POOLS[spec.global_pool]
        if not pooling.reductions:
            return x
        ys = [op(GLOBAL_REDUCTIONS[r], [x]) for r in pooling.reductions]
        if len(ys) == 1:
            y = ys[0]
        elif pooling.combine == "concat":
            y = op("Concat", ys, axis=1)
        else:
            total = functools.reduce(lambda a, b: op("Add", [a, b]), ys)
            y = op("Mul", [total, const("pool_mean", 1.0 / len(ys))])
        return op("Flatten", [y])

    batch = batch_size if batch_size else "batch"
    h, w = img_size
    shape = [batch, 3, h, w] if layout == "nchw" else [batch, h, w, 3]
    x = "input" if layout == "nchw" else op("Transpose", ["input"], perm=[0, 3, 1, 2])
    x = conv(x, params["stem"], spec.stem, "stem")
    for i, (block, layers) in enumerate(zip(spec.blocks, params["blocks"], strict=True)):
        shortcut = x
        for j, (c, p) in enumerate(zip(block.convs, layers, strict=True)):
            x = conv(x, p, c, f"blocks.{i}.{j}")
        x = op("Add", [x, shortcut]) if block.skip else x
    x = pool(conv(x, params["head"], spec.head, "head"))
    if not spec.global_pool and layout == "nhwc":  # the feature map in the input's layout
        x = op("Transpose", [x], perm=[0, 2, 3, 1])
    if spec.has_classifier:
        fc = params["classifier"]
        x = op("Gemm", [x, const("classifier.weight", fc["weight"]), const("classifier.bias", fc["bias"])])
    nodes[-1].output[0] = "logits"
    out_shape = [batch, None] if spec.global_pool else [batch, None, None, None]
    graph = helper.make_graph(
        nodes,
        "mv2jax",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mv2jax")
    onnx.checker.check_model(model)
    return model


def serialize(model: MobileNetV2, img_size: tuple[int, int], batch_size: int | None, layout: str) -> bytes:
    fused = fuse_for_inference(model, conv_impl="xla")  # the parameters and spec; no XLA code runs
    return onnx_model(fused, img_size, batch_size, layout).SerializeToString()


def runner(path: Path, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """`run(x)` -> logits of an ONNX artifact in ONNX Runtime (CPU); `x` in the artifact's own layout."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(["logits"], {"input": np.ascontiguousarray(x, np.float32)})[0]
