"""What this machine can do at best, measured with XLA on the benchmark's cores, and what the targets ask of it.

`roofline_phase` times an fp32 matmul (GFLOP/s) and two memory-bound passes over arrays much larger than the
caches (GB/s): an in-place add (read two arrays, write one back into the first, as STREAM counts it: 12 bytes
per element) and a sum (4 bytes per element). `requirements` turns a target throughput (images/s) and XLA's
cost analysis of the program (flops and bytes accessed per image) into the GFLOP/s and GB/s that throughput
needs, as fractions of the measured peaks. Above 1 the target is out of reach for that program on this machine;
reaching it needs fewer flops or fewer bytes, not faster kernels. XLA counts every operand and result of every
kernel, so bytes that stay in cache are counted too: the GB/s figure is the one that matters when a batch's
activations do not fit in cache (a batch-32 train step), and an upper bound otherwise.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mv2jax.bench.common import MIB, BenchConfig, time_calls


def _rate(call, units_per_call: float, cfg: BenchConfig) -> dict[str, Any]:
    """Median (min, max) units per second of `call` over `cfg.repeats` timed runs (`time_calls`)."""
    timing = time_calls(call, 1, cfg)
    return {k: timing[k] * units_per_call for k in ("median", "min", "max")}


def roofline_phase(cfg: BenchConfig) -> list[dict[str, Any]]:
    """Matmul GFLOP/s and memory GB/s of this process's cores, as XLA reaches them (sizes: `cfg.roofline`)."""
    n, elements = cfg.roofline.matmul_size, cfg.roofline.memory_mib * MIB // 4
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul_rate = _rate(lambda: jax.block_until_ready(matmul(a, b)), 2 * n**3 / 1e9, cfg)

    x = jnp.ones((elements,), jnp.float32)
    y = jnp.full((elements,), 1e-7, jnp.float32)
    add_in_place = jax.jit(jnp.add, donate_argnums=0)  # donated: the result reuses x's buffer, no allocation
    holder = [x]

    def add() -> None:
        holder[0] = jax.block_until_ready(add_in_place(holder[0], y))

    add_rate = _rate(add, 12 * elements / 1e9, cfg)
    total = jax.jit(jnp.sum)
    sum_rate = _rate(lambda: jax.block_until_ready(total(y)), 4 * elements / 1e9, cfg)
    return [
        {
            "side": "mv2jax",
            "mode": "roofline",
            "variant": "xla",
            "batch_size": 0,
            "status": "ok",
            "matmul_gflops_per_s": matmul_rate,
            "matmul_size": n,
            "memory_gb_per_s": {
                "add_in_place": add_rate,
                "sum": sum_rate,
                "best": max(add_rate["median"], sum_rate["median"]),
            },
            "memory_mib_per_array": cfg.roofline.memory_mib,
        }
    ]


def requirements(images_per_s: float, cost_per_image: dict[str, float], roofline: dict[str, Any]) -> dict[str, float]:
    """GFLOP/s and GB/s that `images_per_s` of a program with XLA's `cost_per_image` needs, and their fractions
    of the measured matmul and memory peaks (`roofline`: a `roofline_phase` result). Without
    `cost_per_image["mib_accessed"]`, the GFLOP/s only."""
    gflops = images_per_s * cost_per_image["gflops"]
    out = {
        "images_per_s": images_per_s,
        "gflops_per_s": gflops,
        "of_matmul_peak": gflops / roofline["matmul_gflops_per_s"]["median"],
    }
    if "mib_accessed" in cost_per_image:
        out["gb_per_s"] = images_per_s * cost_per_image["mib_accessed"] * MIB / 1e9
        out["of_memory_peak"] = out["gb_per_s"] / roofline["memory_gb_per_s"]["best"]
    return out
