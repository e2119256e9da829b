"""LiteRT (.tflite): the BN-folded network with lax convolutions (`conv_impl='xla'`), exported by `jax.export` for
the CPU as a StableHLO portable artifact, then legalised to LiteRT ops by litert-converter (the LiteRT converter's
MLIR passes, which litert-torch also runs), with neither TensorFlow nor torch. Depthwise layers become
DEPTHWISE_CONV_2D and ReLU6 fuses into the convolutions, so XNNPACK takes the whole graph.

Input `input`: float32 `[batch, H, W, 3]` (NHWC, LiteRT's own layout; 'nchw' adds one transpose at the input), a
fixed batch size (1 unless another is asked for). Output `logits`: `[batch, num_classes]`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from mv2jax.export.stablehlo import exported
from mv2jax.models import MobileNetV2, fuse_for_inference

SIGNATURE = "serving_default"


def serialize(model: MobileNetV2, img_size: tuple[int, int], batch_size: int | None, layout: str) -> bytes:
    from litert_converter.mlir import ir, passmanager
    from litert_converter.mlir._mlir_libs import converter_api_ext as converter
    from litert_converter.mlir.dialects import stablehlo

    fused = fuse_for_inference(model, conv_impl="xla")
    artifact = exported(fused, img_size, batch_size, layout=layout, platforms=("cpu",))
    context = ir.Context()
    converter.prepare_mlir_context(context)
    with context:
        # The portable artifact is versioned StableHLO (VHLO): the converter reads it whatever JAX wrote it.
        module = stablehlo.deserialize_portable_artifact(context, artifact.mlir_module_serialized)
        converter.set_signature(
            module.operation, signature_name=SIGNATURE, input_names=["input"], output_names=["logits"]
        )
        converter.run_convert_to_tfl_passes(module, passmanager.PassManager(), converter.ConvertToTFLConfig())
        return bytes(converter.export_flatbuffer_to_bytes(module.operation))


def runner(path: Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """`run(x)` -> logits of a .tflite artifact in the LiteRT interpreter; `x` in the artifact's layout, at its batch
    size."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()

    def run(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inp["index"], np.ascontiguousarray(x, np.float32))
        interpreter.invoke()
        return interpreter.get_tensor(out["index"]).copy()

    return run
