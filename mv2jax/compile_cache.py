"""JAX's persistent compilation cache, on by default in train.py (`--compile-cache`).

Compiling the train step is the slowest part of starting a run on a CPU; a rerun (same model, shapes, flags, jax
version) reads the compiled program back from the cache instead, several times faster (BENCHMARKS.md has the
measured times). The directory is, in order: the `path` argument ('' turns the cache off),
`$JAX_COMPILATION_CACHE_DIR` (JAX's own setting), or `~/.cache/mv2jax/xla` (`$XDG_CACHE_HOME` respected).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache


def default_cache_dir() -> Path:
    env = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if env:
        return Path(env)
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "mv2jax" / "xla"


def enable_compile_cache(path: str | os.PathLike | None = None, min_compile_time_s: float = 1.0) -> Path | None:
    """Cache compiled programs that took at least `min_compile_time_s` to compile in `path` (see module doc).
    Returns the directory, or None when turned off."""
    directory = None if path is not None and str(path) == "" else Path(path or default_cache_dir())
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_s)
    jax.config.update("jax_compilation_cache_dir", None if directory is None else str(directory))
    compilation_cache.reset_cache()  # JAX opens its cache once: let it pick up the new directory
    return directory
