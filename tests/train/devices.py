"""Shared by the multi-device and multi-process tests: XLA_FLAGS for their JAX subprocesses (the caller's flags
are kept, e.g. `--xla_cpu_max_isa=AVX2`, so that a run of the suite on another CPU code path reaches them; only the
host device count is set) and their float64 bound."""

from __future__ import annotations

import os

_DEVICE_COUNT = "--xla_force_host_platform_device_count"
# Float64 is the yardstick of the algorithmic claims (N devices or processes compute what 1 does): two equivalent
# float64 computations agree to rounding amplified by a few chaotic train steps, far below what a different BN
# grouping or a dropped shard changes (> 1e-2, asserted in test_sharding.py).
TOL_F64 = 1e-9


def xla_flags(devices: int | None = None, flags: str | None = None) -> str:
    """`flags` (default: this process's XLA_FLAGS) without any host device count, plus `devices` host devices
    (None: XLA's default, one CPU device)."""
    flags = os.environ.get("XLA_FLAGS", "") if flags is None else flags
    kept = [f for f in flags.split() if not f.startswith(_DEVICE_COUNT)]
    if devices is not None:
        kept.append(f"{_DEVICE_COUNT}={devices}")
    return " ".join(kept)
