"""The mv2jax side: eval-mode inference and the RA-recipe train step, jitted, timed, compiled ahead of time.

Each measurement reports throughput (images/s), compile time two ways (first call minus a steady-state call;
`jax.jit(...).lower(...)` and `.compile()` timed separately after `jax.clear_caches()`), XLA's
`memory_analysis()` (argument/output/temp/alias bytes) and `cost_analysis()` (flops, bytes accessed, per image),
and the process RSS high-water mark. Inputs are NHWC float32.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import mv2jax
from mv2jax.bench.common import MIB, BenchConfig, peak_rss_mib, time_calls
from mv2jax.compile_cache import enable_compile_cache
from mv2jax.models import fuse_for_inference
from mv2jax.models.backends import resolve_conv_impl
from mv2jax.train.optim import create_optimizer

_MEMORY_FIELDS = (
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "temp_size_in_bytes",
    "alias_size_in_bytes",
    "generated_code_size_in_bytes",
)


def _images(cfg: BenchConfig, batch: int, seed: int = 0) -> jax.Array:
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal((batch, cfg.img_size, cfg.img_size, 3), np.float32))


def _labels(cfg: BenchConfig, batch: int, seed: int = 1) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.num_classes, batch), jnp.int32)


def xla_analysis(jitted: Callable, *args: Any, batch: int) -> dict[str, Any]:
    """Lower and compile `jitted` afresh (caches cleared) and return the times and XLA's analyses."""
    jax.clear_caches()
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    out: dict[str, Any] = {"lower_s": t1 - t0, "compile_s": t2 - t1}
    mem = compiled.memory_analysis()
    if mem is not None:
        out["memory_mib"] = {f.removesuffix("_size_in_bytes"): getattr(mem, f) / MIB for f in _MEMORY_FIELDS}
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    if cost:
        out["cost_per_image"] = {
            "gflops": cost.get("flops", 0.0) / batch / 1e9,
            "mib_accessed": cost.get("bytes accessed", 0.0) / batch / MIB,
            "transcendentals": cost.get("transcendentals", 0.0) / batch,
        }
    return out


def cached_compile_s(jitted: Callable, *args: Any) -> float:
    """Lower + compile time when the program is read back from JAX's persistent compilation cache (what a rerun
    of train.py pays, see `mv2jax.compile_cache`): compiled once into a fresh cache, then timed again."""
    with tempfile.TemporaryDirectory() as cache:
        enable_compile_cache(cache, min_compile_time_s=0.0)
        try:
            jax.clear_caches()
            jitted.lower(*args).compile()
            jax.clear_caches()
            t0 = time.perf_counter()
            jitted.lower(*args).compile()
            return time.perf_counter() - t0
        finally:
            enable_compile_cache("")


def _first_call_s(call: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def _record(mode: str, conv_impl: str, batch: int, call: Callable[[], Any], cfg: BenchConfig) -> dict[str, Any]:
    """First (compiling) call, steady-state timing and RSS of one jitted call; compile info to be completed."""
    first = _first_call_s(call)
    timing = time_calls(call, batch, cfg)
    resolved = resolve_conv_impl(conv_impl)
    return {
        "side": "mv2jax",
        "mode": mode,
        "variant": f"conv_impl={resolved}",
        "batch_size": batch,
        "status": "ok",
        "conv_impl": resolved,
        "conv_impl_auto": resolve_conv_impl("auto"),
        "images_per_s": timing,
        "compile": {"first_call_s": first, "first_call_minus_steady_s": max(first - timing["step_s"], 0.0)},
        "peak_rss_mib": peak_rss_mib(),
    }


def _inference_fn(cfg: BenchConfig, variant: str) -> tuple[Callable, Any, str, Callable[[int], bool]]:
    """(jitted pure function of (weights, images), weights, conv_impl, whether a batch of a size runs in a loop)
    for a conv_impl or the fused network."""
    fused = variant == "fused"
    model = mv2jax.create_model(cfg.model, conv_impl="auto" if fused else variant, num_classes=cfg.num_classes)
    model.eval()
    if fused:
        net = fuse_for_inference(model)
        return (
            jax.jit(net.apply, compiler_options=net.compiler_options),
            net.params,
            net.spec.conv_impl,
            net.loops_over_batch,
        )
    graphdef, state = nnx.split(model)
    return jax.jit(lambda state, x: nnx.merge(graphdef, state)(x)), state, variant, lambda batch: False


def inference_phase(cfg: BenchConfig, variant: str) -> list[dict[str, Any]]:
    """Eval-mode logits of `cfg.model` for each batch size, as one jitted pure function of (weights, images):
    the NNX module with conv_impl `variant`, or (`variant='fused'`) the BatchNorm-folded network."""
    forward, state, conv_impl, loops_over_batch = _inference_fn(cfg, variant)
    results = []
    for batch in sorted(cfg.batch_sizes):
        x = _images(cfg, batch)
        result = _record("inference", conv_impl, batch, lambda x=x: forward(state, x).block_until_ready(), cfg)
        if variant == "fused":
            result["variant"] = f"fused conv_impl={conv_impl}"
        result["compile"].update(xla_analysis(forward, state, x, batch=batch))
        if loops_over_batch(batch):
            # XLA's cost analysis counts a loop body once, not per iteration: per-image figures would be wrong
            result["compile"].pop("cost_per_image", None)
        result["compile"]["cached_s"] = cached_compile_s(forward, state, x)
        results.append(result)
    return results


def build_train_step(model: nnx.Module, cfg: BenchConfig) -> tuple[Callable, Any, str]:
    """(jitted donated step, initial state, which implementation): `mv2jax.train.step`."""
    from mv2jax.train.state import create_train_state
    from mv2jax.train.step import StepConfig, make_train_step

    r = cfg.recipe
    tx = create_optimizer(
        "rmsproptf", r.lr, weight_decay=r.weight_decay, momentum=r.momentum, eps=r.opt_eps, alpha=r.alpha
    )
    graphdef, state = create_train_state(model, tx, use_ema=True)
    step = make_train_step(graphdef, tx, r.lr, StepConfig(label_smoothing=r.smoothing, ema_decay=r.ema_decay))
    return step, state, "mv2jax.train.step"


def train_phase(cfg: BenchConfig, conv_impl: str) -> list[dict[str, Any]]:
    """The RA-recipe train step at `cfg.train_batch_size`, state donated, timed end to end per step."""
    r = cfg.recipe
    model = mv2jax.create_model(
        cfg.model,
        conv_impl=conv_impl,
        num_classes=cfg.num_classes,
        drop_rate=r.drop_rate,
        drop_path_rate=r.drop_path_rate,
    ).train()
    step, state, step_impl = build_train_step(model, cfg)
    batch_size = cfg.train_batch_size
    batch = {"image": _images(cfg, batch_size), "label": _labels(cfg, batch_size)}
    abstract_state = jax.eval_shape(lambda s: s, state)
    holder = [state]

    def call() -> None:
        holder[0], metrics = step(holder[0], batch)
        jax.block_until_ready((holder[0], metrics))

    result = _record("train", conv_impl, batch_size, call, cfg)
    result["step_impl"] = step_impl
    result["compile"].update(xla_analysis(step, abstract_state, batch, batch=batch_size))
    result["compile"]["cached_s"] = cached_compile_s(step, abstract_state, batch)
    return [result]
