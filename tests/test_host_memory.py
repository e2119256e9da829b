"""mv2jax.host_memory: which glibc tunables get added, and that the re-exec really runs with them."""

import os
import subprocess
import sys

import pytest

from mv2jax import host_memory

WANTED = host_memory.tunables()  # {} unless glibc >= 2.26
needs_glibc = pytest.mark.skipif(not WANTED, reason="needs Linux with glibc >= 2.26")
PRINT_TUNABLES = (
    "from mv2jax.host_memory import reexec_with_host_allocator as r; r(); import os, sys; "
    "print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])"
)


def test_environ_left_alone_when_opted_out_or_complete():
    assert host_memory.host_allocator_environ({"MV2JAX_HOST_ALLOCATOR": "0"}) is None
    complete = ":".join(f"{k}={v}" for k, v in WANTED.items())
    assert host_memory.host_allocator_environ({"GLIBC_TUNABLES": complete}) is None


@needs_glibc
def test_tunables_added_and_the_users_own_kept():
    env = host_memory.host_allocator_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4:glibc.rtld.x=1", "K": "v"})
    assert env["K"] == "v"
    got = dict(item.split("=") for item in env["GLIBC_TUNABLES"].split(":"))
    assert got == {**WANTED, "glibc.malloc.arena_max": "4", "glibc.rtld.x": "1"}  # the user's arena_max wins
    assert "glibc.malloc.mmap_max=0" in host_memory.describe(env)
    assert "defaults" in host_memory.describe({})


def _run(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MV2JAX_HOST_ALLOCATOR")}
    out = subprocess.run(
        [sys.executable, "-c", PRINT_TUNABLES, "--flag", "value"],
        env={**env, **env_extra},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.strip()


@needs_glibc
def test_reexec_restarts_the_same_command_with_the_tunables():
    expected = ":".join(f"{k}={v}" for k, v in WANTED.items())
    assert _run({}) == f"{expected} ['--flag', 'value']"
    assert _run({"MV2JAX_HOST_ALLOCATOR": "0"}) == "None ['--flag', 'value']"
