"""XLA_FLAGS for the JAX subprocesses of the tests: the caller's flags are kept (e.g. `--xla_cpu_max_isa=AVX2`,
so that a run of the suite on another CPU code path reaches the subprocesses too), only the host device count is
set."""

from __future__ import annotations

import os

_DEVICE_COUNT = "--xla_force_host_platform_device_count"


def xla_flags(devices: int | None = None, flags: str | None = None) -> str:
    """`flags` (default: this process's XLA_FLAGS) without any host device count, plus `devices` host devices
    (None: XLA's default, one CPU device)."""
    flags = os.environ.get("XLA_FLAGS", "") if flags is None else flags
    kept = [f for f in flags.split() if not f.startswith(_DEVICE_COUNT)]
    if devices is not None:
        kept.append(f"{_DEVICE_COUNT}={devices}")
    return " ".join(kept)
