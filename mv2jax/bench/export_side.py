"""The deployment side: exported artifacts in CPU runtimes, on the same threads as the other phases.

Variants (all fp32, `side='export'`, `mode='inference'`): `onnx` (mv2jax's ONNX artifact, `mv2jax.export`, in ONNX
Runtime), `timm_onnx` (timm's own ONNX export of the same weights, `timm.utils.onnx.onnx_export`, in ONNX Runtime:
the peer), `onnx_openvino` (mv2jax's ONNX read by OpenVINO, compiled per batch size, f32 precision hint; skipped
when openvino is not installed). Each record also holds `logits_error`: the artifact's max|diff| / max|ref| against
timm in float64 on a seeded batch, next to timm's own float32 error on it (the forward-parity yardstick).
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mv2jax.bench.common import BenchConfig, peak_rss_mib, time_calls

VARIANTS = ("onnx", "timm_onnx", "onnx_openvino")
ERROR_BATCH = 2


def _timm_model(cfg: BenchConfig):
    from mv2jax.bench.timm_side import _create

    return _create(cfg, "eager").eval()  # the weights every other phase measures (timm's init, seed 0)


def _export_mv2jax(tmodel, cfg: BenchConfig, path: Path) -> None:
    from mv2jax.convert import timm_to_mv2jax
    from mv2jax.export import data_config, export
    from mv2jax.models import create_model

    state = {k: v.detach().numpy() for k, v in tmodel.state_dict().items()}
    model = timm_to_mv2jax(state, create_model(cfg.model, num_classes=cfg.num_classes)).eval()
    export(model, path, "onnx", data_config(model, cfg.img_size), name=cfg.model)


def _export_timm(tmodel, cfg: BenchConfig, path: Path) -> None:
    import torch
    from timm.utils.onnx import onnx_export

    x = torch.randn(1, 3, cfg.img_size, cfg.img_size)
    onnx_export(tmodel, str(path), example_input=x, check=False, input_names=["input"], output_names=["logits"])


def _openvino_runners(path: Path, cfg: BenchConfig) -> Callable[[int], Callable[[np.ndarray], np.ndarray]]:
    """batch -> run(x NCHW): the model compiled by OpenVINO for that static batch size."""
    import openvino as ov

    core = ov.Core()
    options = {"INFERENCE_NUM_THREADS": cfg.resolved_threads(), "INFERENCE_PRECISION_HINT": "f32"}

    def for_batch(batch: int) -> Callable[[np.ndarray], np.ndarray]:
        model = core.read_model(str(path))
        model.reshape({0: [batch, 3, cfg.img_size, cfg.img_size]})
        request = core.compile_model(model, "CPU", options).create_infer_request()
        return lambda x: request.infer({0: x})[0]

    return for_batch


def _errors(tmodel, run: Callable[[np.ndarray], np.ndarray], cfg: BenchConfig) -> dict[str, float]:
    import torch

    from mv2jax.export.verify import rel_err, timm_logits

    x = np.random.default_rng(0).standard_normal((ERROR_BATCH, cfg.img_size, cfg.img_size, 3), dtype=np.float32)
    ref = timm_logits(tmodel, x, torch.float64)
    return {
        "artifact": rel_err(run(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), ref),
        "timm_float32": rel_err(timm_logits(tmodel, x, torch.float32), ref),
    }


def inference_phase(cfg: BenchConfig, variant: str) -> list[dict[str, Any]]:
    from mv2jax.bench.timm_side import set_threads
    from mv2jax.export.onnx_graph import runner

    if variant not in VARIANTS:
        raise ValueError(f"unknown export variant {variant!r}: one of {', '.join(VARIANTS)}")
    threads = cfg.resolved_threads()
    base = {"side": "export", "mode": "inference", "variant": variant, "threads": threads}
    if variant == "onnx_openvino" and importlib.util.find_spec("openvino") is None:
        skipped = {"status": "skipped", "error": "openvino is not installed"}
        return [base | skipped | {"batch_size": b} for b in sorted(cfg.batch_sizes)]
    set_threads(threads)
    tmodel = _timm_model(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "model.onnx")
        (_export_timm if variant == "timm_onnx" else _export_mv2jax)(tmodel, cfg, path)
        if variant == "onnx_openvino":
            for_batch = _openvino_runners(path, cfg)
        else:
            run = runner(path, threads)
            for_batch = lambda batch: run  # noqa: E731 (one session, dynamic batch)
        errors = _errors(tmodel, for_batch(ERROR_BATCH), cfg)
        results = []
        for batch in sorted(cfg.batch_sizes):
            x = np.random.default_rng(batch).standard_normal((batch, 3, cfg.img_size, cfg.img_size), np.float32)
            run_b = for_batch(batch)
            timing = time_calls(lambda run_b=run_b, x=x: run_b(x), batch, cfg)
            results.append(
                base
                | {
                    "batch_size": batch,
                    "status": "ok",
                    "images_per_s": timing,
                    "logits_error": errors,
                    "peak_rss_mib": peak_rss_mib(),
                }
            )
    return results
