"""Files the weight converter writes: safetensors out and checksums, every output written atomically (`mv2jax.io`).
Reading is `mv2jax.weights`' job."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mv2jax.io import replace, sibling, write_atomic

__all__ = [
    "refuse_existing",
    "replace",
    "sha256_file",
    "sibling",
    "write_atomic",
    "write_safetensors",
]


def refuse_existing(paths: Sequence[Path], overwrite: bool) -> None:
    for path in paths:
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists: pass --overwrite to replace it")


def write_safetensors(path: Path, state_dict: Mapping[str, np.ndarray]) -> None:
    """`state_dict` as a safetensors file (torch's `format` metadata), written atomically."""
    from safetensors.numpy import save

    data = save({k: np.asarray(v, order="C") for k, v in state_dict.items()}, metadata={"format": "pt"})
    write_atomic(path, data)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
