"""The deployment side: exported artifacts in CPU runtimes, on the same threads as the other phases.

Variants (all fp32, `side='export'`, `mode='inference'`): `onnx` (mv2jax's ONNX artifact, `mv2jax.export`, in ONNX
Runtime), `timm_onnx` (timm's own ONNX export of the same weights, `timm.utils.onnx.onnx_export`, in ONNX Runtime:
the peer), `onnx_openvino` (mv2jax's ONNX read by OpenVINO, compiled per batch size, f32 precision hint), `tflite`
(mv2jax's LiteRT artifact, NHWC, via litert-converter) and `timm_tflite` (litert-torch's conversion of timm's model,
NCHW) in the LiteRT interpreter (XNNPACK), one artifact per batch size. Each is fed inputs in its own layout. A
variant whose packages are not installed is reported as skipped. Each record also holds `logits_error`: the
artifact's max|diff| / max|ref| against timm in float64 on a seeded batch of the smallest batch size, next to
timm's own float32 error on it (the forward-parity yardstick).
"""

from __future__ import annotations

import functools
import importlib.util
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mv2jax.bench.common import BenchConfig, peak_rss_mib, time_interleaved

VARIANTS = ("onnx", "timm_onnx", "onnx_openvino", "tflite", "timm_tflite")
NEEDS = {"onnx_openvino": "openvino", "tflite": "litert_converter", "timm_tflite": "litert_torch"}
NHWC = ("tflite",)  # the variants whose artifact takes NHWC input; the rest take NCHW
PEERS = {"onnx": "timm_onnx", "tflite": "timm_tflite"}  # timed interleaved with the artifact, in its phase


def _timm_model(cfg: BenchConfig):
    from mv2jax.bench.timm_side import _create

    return _create(cfg, "eager").eval()  # the weights every other phase measures (timm's init, seed 0)


def _export_mv2jax(tmodel, cfg: BenchConfig, path: Path, fmt: str = "onnx", batch: int | None = None) -> None:
    from mv2jax.export import data_config, export
    from mv2jax.models import load_model

    state = {k: v.detach().numpy() for k, v in tmodel.state_dict().items()}
    model = load_model(cfg.model, state_dict=state, num_classes=cfg.num_classes).model.eval()
    export(model, path, fmt, data_config(model, cfg.img_size), name=cfg.model, batch_size=batch)


def _tflite_runners(tmodel, cfg: BenchConfig, tmp: str, variant: str) -> Callable[[int], Callable]:
    """batch -> run(x): a LiteRT artifact converted for that batch size, in the interpreter."""
    from mv2jax.export.tflite import runner

    def for_batch(batch: int) -> Callable[[np.ndarray], np.ndarray]:
        path = Path(tmp, f"{variant}_{batch}.tflite")
        if variant == "tflite":
            _export_mv2jax(tmodel, cfg, path, "tflite", batch)
        else:
            import litert_torch
            import torch

            example = torch.zeros(batch, 3, cfg.img_size, cfg.img_size)
            litert_torch.convert(tmodel, (example,)).export(str(path))
        return runner(path, cfg.resolved_threads())

    return for_batch


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


def _errors(
    tmodel, run: Callable[[np.ndarray], np.ndarray], batch: int, cfg: BenchConfig, nhwc: bool
) -> dict[str, float]:
    import torch

    from mv2jax.export.verify import rel_err, timm_logits

    x = np.random.default_rng(0).standard_normal((batch, cfg.img_size, cfg.img_size, 3), dtype=np.float32)
    ref = timm_logits(tmodel, x, torch.float64)
    return {
        "artifact": rel_err(run(x if nhwc else np.ascontiguousarray(x.transpose(0, 3, 1, 2))), ref),
        "timm_float32": rel_err(timm_logits(tmodel, x, torch.float32), ref),
    }


def _runners(tmodel, cfg: BenchConfig, tmp: str, variant: str) -> Callable[[int], Callable[[np.ndarray], np.ndarray]]:
    """batch -> run(x) for `variant`'s artifact, made in `tmp` (one artifact / compiled model per batch size)."""
    from mv2jax.export.onnx_graph import runner

    path = Path(tmp, f"{variant}.onnx")
    if variant.endswith("tflite"):
        for_batch = _tflite_runners(tmodel, cfg, tmp, variant)
    elif variant == "onnx_openvino":
        _export_mv2jax(tmodel, cfg, path)
        for_batch = _openvino_runners(path, cfg)
    else:
        (_export_timm if variant == "timm_onnx" else _export_mv2jax)(tmodel, cfg, path)
        run = runner(path, cfg.resolved_threads())
        for_batch = lambda batch: run  # noqa: E731 (one session, dynamic batch)
    return functools.cache(for_batch)


def _input(cfg: BenchConfig, batch: int, variant: str) -> np.ndarray:
    nhwc = variant in NHWC
    shape = (batch, cfg.img_size, cfg.img_size, 3) if nhwc else (batch, 3, cfg.img_size, cfg.img_size)
    return np.random.default_rng(batch).standard_normal(shape, np.float32)


def _missing(variant: str) -> str | None:
    need = NEEDS.get(variant)
    return need if need and importlib.util.find_spec(need) is None else None


def inference_phase(cfg: BenchConfig, variant: str) -> list[dict[str, Any]]:
    """`variant`'s artifact timed at every batch size; where it has a peer (`PEERS`, same runtime) whose packages
    are installed, the peer's artifact is timed in the same process, interleaved run by run, and recorded under
    `peer` (the ratio the deployment targets take)."""
    from mv2jax.bench.timm_side import set_threads

    if variant not in VARIANTS:
        raise ValueError(f"unknown export variant {variant!r}: one of {', '.join(VARIANTS)}")
    threads = cfg.resolved_threads()
    base = {"side": "export", "mode": "inference", "variant": variant, "threads": threads}
    if missing := _missing(variant):
        skipped = {"status": "skipped", "error": f"{missing} is not installed"}
        return [base | skipped | {"batch_size": b} for b in sorted(cfg.batch_sizes)]
    set_threads(threads)
    tmodel = _timm_model(cfg)
    peer = PEERS.get(variant)
    peer = peer if peer and not _missing(peer) else None
    with tempfile.TemporaryDirectory() as tmp:
        runners = {v: _runners(tmodel, cfg, tmp, v) for v in (variant, peer) if v}
        small = min(cfg.batch_sizes)
        errors = _errors(tmodel, runners[variant](small), small, cfg, variant in NHWC)
        results = []
        for batch in sorted(cfg.batch_sizes):
            calls = {}
            for v, for_batch in runners.items():
                run_b, x = for_batch(batch), _input(cfg, batch, v)
                calls[v] = lambda run_b=run_b, x=x: run_b(x)
            timings = time_interleaved(calls, batch, cfg)
            record = base | {
                "batch_size": batch,
                "status": "ok",
                "images_per_s": timings[variant],
                "logits_error": errors,
                "peak_rss_mib": peak_rss_mib(),
            }
            if peer:
                record["peer"] = {"variant": peer, "images_per_s": timings[peer]}
            results.append(record)
    return results
