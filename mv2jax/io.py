"""Atomic file replacement, the one way mv2jax writes a file users keep: write a hidden sibling on the same
filesystem, then rename it into place, so a crash never leaves a half-written output."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def sibling(path: Path, kind: str) -> Path:
    """A hidden name beside `path` (same filesystem, so a rename is atomic), unique to this process."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def replace(new: Path, dst: Path) -> None:
    """Move the complete `new` to `dst`; an existing directory is swapped out first (rename cannot replace one)."""
    if dst.is_dir():
        old = sibling(dst, "old")
        os.replace(dst, old)
        os.replace(new, dst)
        shutil.rmtree(old)
    else:
        os.replace(new, dst)


def write_atomic(path: Path, data: bytes) -> None:
    """`path` holds either its old content or all of `data`, never part of it."""
    path = Path(path)
    tmp = sibling(path, "tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
