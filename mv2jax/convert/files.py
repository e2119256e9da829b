"""Files the weight converter reads and writes: safetensors in and out, checksums, and atomic replacement (write
a hidden sibling on the same filesystem, then rename it into place), so an output is never half-written."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def refuse_existing(paths: Sequence[Path], overwrite: bool) -> None:
    for path in paths:
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists: pass --overwrite to replace it")


def sibling(path: Path, kind: str) -> Path:
    """A hidden name beside `path` (same filesystem, so a rename is atomic)."""
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
    tmp = sibling(path, "tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_safetensors(path: Path, state_dict: Mapping[str, np.ndarray]) -> None:
    """Atomically: write a temporary file in the same directory, then rename it over `path`."""
    from safetensors.numpy import save_file

    tmp = sibling(path, "tmp")
    try:
        save_file({k: np.asarray(v, order="C") for k, v in state_dict.items()}, str(tmp), metadata={"format": "pt"})
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return dict(load_file(str(path)))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
