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
The benchmark does the same, for timm's phases and mv2jax's alike. In your own training program, export
`GLIBC_TUNABLES` as `tunables()` gives it before starting Python. Settings you put in GLIBC_TUNABLES yourself are
kept.

The setting (`train.py --host-allocator`) is 'on', 'off' or 'auto'. 'auto' is on only when JAX will run on the
CPU: the temporaries above are XLA:CPU's, and on a GPU/TPU host they live in device memory, so such a host never
re-executes. It is decided without importing JAX (`decide`): from `JAX_PLATFORMS` when set, else from whether a
JAX accelerator plugin is installed. `MV2JAX_HOST_ALLOCATOR=0` means 'off' too. Data-loading worker
processes inherit the setting, which does not slow the RA train transform's loader.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Mapping, Sequence

OPT_OUT = "MV2JAX_HOST_ALLOCATOR"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
HEAP_TUNABLES = {
    "glibc.malloc.mmap_max": "0",
    "glibc.malloc.arena_max": "1",
    "glibc.malloc.trim_threshold": str(64 * 2**30),
}
HUGEPAGE_TUNABLES = {"glibc.malloc.hugetlb": "1"}
SETTINGS = ("auto", "on", "off")
# Modules of JAX's accelerator plugins: jax[cuda12/13] (the plugin, and its PJRT part under the `jax_plugins`
# namespace, where other PJRT plugins live too) and jax[tpu]'s libtpu.
ACCELERATOR_MODULES = ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu")
PLUGIN_NAMESPACE = "jax_plugins"


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


def host_allocator_environ(environ: Mapping[str, str] = os.environ, *, opt_out: bool = True) -> dict[str, str] | None:
    """`environ` with mv2jax's tunables added to GLIBC_TUNABLES (the ones already there kept), or None when that
    changes nothing: all present already, opted out with MV2JAX_HOST_ALLOCATOR=0 (unless `opt_out` is False), or
    not glibc."""
    if opt_out and environ.get(OPT_OUT, "1") == "0":
        return None
    current = _parse(environ.get("GLIBC_TUNABLES", ""))
    missing = {k: v for k, v in tunables().items() if k not in current}
    if not missing:
        return None
    value = ":".join(f"{k}={v}" for k, v in {**current, **missing}.items())
    return {**environ, "GLIBC_TUNABLES": value}


@dataclasses.dataclass(frozen=True)
class Decision:
    """Whether the host allocator setting is in force (`on`), and why (`reason`, for the run log)."""

    on: bool
    reason: str

    def describe(self, environ: Mapping[str, str] = os.environ) -> str:
        """One line: the decision, why, and the tunables this process runs with."""
        return f"{'on' if self.on else 'off'} ({self.reason}); {describe(environ)}"


def accelerator_plugins() -> list[str]:
    """The JAX accelerator plugins installed (module names), found without importing JAX or any plugin."""
    found = [name for name in ACCELERATOR_MODULES if importlib.util.find_spec(name) is not None]
    namespace = importlib.util.find_spec(PLUGIN_NAMESPACE)
    if namespace is not None and namespace.submodule_search_locations:
        found += [f"{PLUGIN_NAMESPACE}.{m.name}" for m in pkgutil.iter_modules(namespace.submodule_search_locations)]
    found += [f"entry point {ep.name}" for ep in importlib.metadata.entry_points(group=PLUGIN_NAMESPACE)]
    return sorted(set(found))


def decide(
    setting: str = "auto", environ: Mapping[str, str] = os.environ, plugins: Sequence[str] | None = None
) -> Decision:
    """The host allocator setting in force: 'on' / 'off' as given; 'auto' on only for JAX's CPU backend, which is
    the first of `JAX_PLATFORMS` when set, else the CPU unless an accelerator plugin is installed (`plugins`,
    default `accelerator_plugins()`). `MV2JAX_HOST_ALLOCATOR=0` turns 'auto' off. Imports nothing of JAX."""
    if setting not in SETTINGS:
        raise ValueError(f"--host-allocator must be one of {', '.join(SETTINGS)}, got {setting!r}")
    if setting != "auto":
        return Decision(setting == "on", f"--host-allocator {setting}")
    if environ.get(OPT_OUT, "1") == "0":
        return Decision(False, f"auto, {OPT_OUT}=0")
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        first = platforms.split(",")[0].strip().lower()
        backend = "the CPU backend" if first == "cpu" else f"the {first} backend"
        return Decision(first == "cpu", f"auto: JAX_PLATFORMS={platforms}, {backend}")
    plugins = accelerator_plugins() if plugins is None else list(plugins)
    if plugins:
        return Decision(False, f"auto: accelerator plugin {', '.join(plugins)} installed, not the CPU backend")
    return Decision(True, "auto: no accelerator plugin installed, the CPU backend")


def reexec_with_host_allocator(setting: str = "auto") -> None:
    """Replace this process with the same command line, run with mv2jax's tunables (see the module docstring),
    when the setting is in force (`decide`) and `host_allocator_environ` says they are missing. Call it first
    thing in a program's `__main__`: the new process starts from scratch. Returns, doing nothing, when they do not
    apply or the exec fails."""
    if not decide(setting).on:
        return
    environ = host_allocator_environ(opt_out=False)  # decided already: an explicit 'on' wins over the variable
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
