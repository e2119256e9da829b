"""Transparent huge pages for the host allocator, so that big CPU buffers do not page-fault on every step.

XLA:CPU allocates each step's temporaries afresh (several GB for a batch-32 MobileNetV2 train step) and glibc's
malloc serves blocks that large with mmap and gives them back with munmap. The next step then touches new 4 KiB
pages: on this project's 2-core benchmark machine that was ~595,000 page faults and ~1.1 s of kernel time per
train step, a third of all CPU time. With glibc's `glibc.malloc.hugetlb=1` tunable, malloc asks the kernel for
transparent huge pages on those blocks (when the kernel's THP mode is `madvise` or `always`), which cuts the faults
~400x and measured 1.93 s -> 1.31 s per step there. The tunable is read when a process starts, so `train.py`,
`validate.py` and the benchmark re-execute themselves with it once (`reexec_with_hugepages`); set
`MV2JAX_HUGEPAGES=0` to keep glibc's defaults. In your own program, start Python with
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` in the environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "MV2JAX_HUGEPAGES"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


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
    return text[start + 1:end] if 0 <= start < end else None


def hugepages_active(environ: Mapping[str, str] = os.environ) -> bool:
    """True when this environment's malloc asks for huge pages (the tunable is set and the kernel allows it)."""
    return TUNABLE in environ.get("GLIBC_TUNABLES", "").split(":") and thp_mode() in ("always", "madvise")


def hugepage_environ(environ: Mapping[str, str] = os.environ) -> dict[str, str] | None:
    """`environ` plus the huge-page tunable, or None when it would change nothing: already set, opted out with
    MV2JAX_HUGEPAGES=0, not glibc >= 2.35 (the first with the tunable), or the kernel's THP mode is `never`."""
    if environ.get(OPT_OUT, "1") == "0" or sys.platform != "linux":
        return None
    tunables = [t for t in environ.get("GLIBC_TUNABLES", "").split(":") if t]
    if any(t.startswith("glibc.malloc.hugetlb=") for t in tunables):
        return None
    version = _glibc_version()
    if version is None or version < (2, 35) or thp_mode() not in ("always", "madvise"):
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join([*tunables, TUNABLE])}


def reexec_with_hugepages() -> None:
    """Replace this process with the same command line run with the huge-page tunable (see the module docstring),
    when `hugepage_environ` says it would apply. Call it first thing in a program's `__main__`: the new process
    starts from scratch. Returns (doing nothing) when it does not apply or the exec fails."""
    environ = hugepage_environ()
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
    """One line for logs and reports: whether this process's malloc uses transparent huge pages."""
    mode = thp_mode()
    if hugepages_active(environ):
        return f"glibc malloc with transparent huge pages ({TUNABLE}; kernel THP mode '{mode}')"
    return f"glibc malloc defaults (4 KiB pages for malloc'd blocks unless THP mode is 'always'; THP mode '{mode}')"
