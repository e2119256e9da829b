"""LiteRT (.tflite): the model converted to timm's PyTorch model (`mv2jax_to_timm`, bit-exact weights), then by
litert-torch (torch.export -> StableHLO -> the LiteRT converter), which needs neither TensorFlow nor jax2tf.
Run by the LiteRT interpreter (`ai-edge-litert`, XNNPACK on CPU).

Input `[batch, 3, H, W]` float32 (NCHW, timm's layout), a fixed batch size (1 unless another is asked for).
Output: logits `[batch, num_classes]`. Exporting needs torch, timm and litert-torch.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mv2jax.convert.state_dict import mv2jax_to_timm
from mv2jax.convert.verify import timm_reference
from mv2jax.models import MobileNetV2


def serialize(model: MobileNetV2, img_size: tuple[int, int], batch_size: int | None, layout: str) -> bytes:
    import litert_torch
    import torch

    tmodel = timm_reference(model, mv2jax_to_timm(model))
    example = torch.zeros(batch_size or 1, model.in_chans, *img_size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "model.tflite")
        litert_torch.convert(tmodel, (example,)).export(str(path))
        return path.read_bytes()


def runner(path: Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """`run(x)` -> logits of a .tflite artifact in the LiteRT interpreter; `x` NCHW at the artifact's batch size."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()

    def run(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inp["index"], np.ascontiguousarray(x, np.float32))
        interpreter.invoke()
        return interpreter.get_tensor(out["index"]).copy()

    return run
