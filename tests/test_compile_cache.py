"""The persistent compilation cache: programs land in the chosen directory, '' turns it off, and switching
directories in one process takes effect (JAX opens its cache only once unless reset)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mv2jax.compile_cache import default_cache_dir, enable_compile_cache


def _compile_new_program(scale: float) -> None:
    jax.jit(lambda x: jnp.sin(x) * scale).lower(jnp.ones(3)).compile()


def test_programs_are_cached_in_the_chosen_directory_and_empty_turns_it_off(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    try:
        assert enable_compile_cache(first, min_compile_time_s=0.0) == first
        _compile_new_program(1.5)
        assert any(first.iterdir())
        assert enable_compile_cache(second, min_compile_time_s=0.0) == second
        _compile_new_program(2.5)
        assert any(second.iterdir())
        before = {p.name for p in first.iterdir()} | {p.name for p in second.iterdir()}
        assert enable_compile_cache("") is None
        _compile_new_program(3.5)
        after = {p.name for p in first.iterdir()} | {p.name for p in second.iterdir()}
        assert after == before
    finally:
        enable_compile_cache("")


def test_default_directory_follows_jax_setting_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert default_cache_dir() == tmp_path / "jax"
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "mv2jax" / "xla"
