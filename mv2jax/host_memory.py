"""A host allocator setting that keeps big CPU buffers mapped from one step to the next.

XLA:CPU allocates each step's temporaries afresh (gigabytes for a batch-32 MobileNetV2 train step). glibc's
malloc serves blocks that large with mmap and returns them with munmap, so every step touches fresh 4 KiB pages:
page faults and kernel time become a large share of each train step (BENCHMARKS.md has the measurements). glibc
tunables fix it:
- `glibc.malloc.mmap_max=0` and `glibc.malloc.arena_max=1`: big blocks come from the main heap. Without the
  arena limit, XLA's worker threads get their own arenas, and those still mmap big blocks;
- a `trim_threshold` of 64 GiB: freed memory stays in the heap for the next step instead of going back to the
  kernel;
- `glibc.malloc.hugetlb=1` (glibc >= 2.35, when the kernel's transparent-huge-page mode is `madvise` or
  `always`): the heap on 2 MiB pages, fewer TLB misses.
In steady state there are then no page faults, and RSS shows the retained heap, well above one step's own
peak.

Huge pages alone (without keeping the heap) were as fast back to back. But any pause between steps (sleep,
loading, eval) brought the kernel time back, spent in page compaction.

The setting is for training, and it has costs. XLA compiles slower under one arena: paid once per run, and not
at all from the compile cache. One arena also costs small programs: fused inference runs slower under it
(threads contend for the one heap), at batch 1 most. So only `train.py` applies it. It re-executes
itself once with the tunables, because glibc reads them when a process starts (`reexec_with_host_allocator`).
The benchmark does the same, for timm's phases and mv2jax's alike. Set `MV2JAX_HOST_ALLOCATOR=0` to keep glibc's
defaults. In your own training program, export `GLIBC_TUNABLES` as `tunables()` gives it before starting
Python. Settings you put in GLIBC_TUNABLES yourself are kept.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

OPT_OUT = "MV2JAX_HOST_ALLOCATOR"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
HEAP_TUNABLES = {
    "glibc.malloc.mmap_max": "0",
    "glibc.malloc.arena_max": "1",
    "glibc.malloc.trim_threshold": str(64 * 2**30),
}
HUGEPAGE_TUNABLES = {"glibc.malloc.hugetlb": "1"}


def _glibc_version() -> tuple[int, int] | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, ValueError, OSError):
        return None


def thp_mode() -> str | None:
    """The kernel's transparent-huge-page mode ('always', 'madvise' or 'never'), None when not Linux."""
    try:
        with open(THP_MODE_FILE) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def tunables() -> dict[str, str]:
    """The glibc tunables this machine supports out of mv2jax's setting ({} when not glibc >= 2.26)."""
    version = _glibc_version()
    if sys.platform != "linux" or version is None or version < (2, 26):
        return {}
    hugepages = version >= (2, 35) and thp_mode() in ("always", "madvise")
    return {**HEAP_TUNABLES, **(HUGEPAGE_TUNABLES if hugepages else {})}


def _parse(value: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in value.split(":") if "=" in item)


def host_allocator_environ(environ: Mapping[str, str] = os.environ) -> dict[str, str] | None:
    """`environ` with mv2jax's tunables added to GLIBC_TUNABLES (the ones already there kept), or None when that
    changes nothing: all present already, opted out with MV2JAX_HOST_ALLOCATOR=0, or not glibc."""
    if environ.get(OPT_OUT, "1") == "0":
        return None
    current = _parse(environ.get("GLIBC_TUNABLES", ""))
    missing = {k: v for k, v in tunables().items() if k not in current}
    if not missing:
        return None
    value = ":".join(f"{k}={v}" for k, v in {**current, **missing}.items())
    return {**environ, "GLIBC_TUNABLES": value}


def reexec_with_host_allocator() -> None:
    """Replace this process with the same command line, run with mv2jax's tunables (see the module docstring),
    when `host_allocator_environ` says they are missing. Call it first thing in a program's `__main__`: the new
    process starts from scratch. Returns, doing nothing, when they do not apply or the exec fails."""
    environ = host_allocator_environ()
    if environ is None:
        return
    argv = [sys.executable, *getattr(sys, "orig_argv", [sys.executable, *sys.argv])[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, argv, environ)
    except OSError:
        return


def describe(environ: Mapping[str, str] = os.environ) -> str:
    """One line for logs and reports: which of mv2jax's allocator tunables this process runs with."""
    current = _parse(environ.get("GLIBC_TUNABLES", ""))
    ours = {k: v for k, v in current.items() if k in HEAP_TUNABLES.keys() | HUGEPAGE_TUNABLES.keys()}
    mode = thp_mode()
    if not ours:
        return f"glibc malloc defaults (kernel THP mode '{mode}')"
    return "glibc malloc with " + ":".join(f"{k}={v}" for k, v in ours.items()) + f" (kernel THP mode '{mode}')"
