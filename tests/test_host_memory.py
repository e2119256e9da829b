"""mv2jax.host_memory: when the huge-page malloc tunable is added, and that the re-exec really applies it."""

import os
import subprocess
import sys

import pytest

from mv2jax import host_memory

APPLIES = host_memory.hugepage_environ({}) is not None  # glibc >= 2.35 and THP 'madvise'/'always' here
PRINT_TUNABLES = ("from mv2jax.host_memory import reexec_with_hugepages as r; r(); import os, sys; "
                  "print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])")


def test_environ_left_alone_when_opted_out_or_already_set():
    assert host_memory.hugepage_environ({"MV2JAX_HUGEPAGES": "0"}) is None
    assert host_memory.hugepage_environ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
    assert host_memory.hugepage_environ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}) is None


@pytest.mark.skipif(not APPLIES, reason="needs Linux glibc >= 2.35 with transparent huge pages enabled")
def test_tunable_appended_to_existing_ones():
    env = host_memory.hugepage_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "KEEP": "x"})
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "KEEP": "x"}
    assert host_memory.hugepages_active(env)
    assert "transparent huge pages" in host_memory.describe(env)
    assert "defaults" in host_memory.describe({})


def _run(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MV2JAX_HUGEPAGES")}
    out = subprocess.run([sys.executable, "-c", PRINT_TUNABLES, "--flag", "value"], env={**env, **env_extra},
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not APPLIES, reason="needs Linux glibc >= 2.35 with transparent huge pages enabled")
def test_reexec_restarts_the_same_command_with_the_tunable():
    assert _run({}) == "glibc.malloc.hugetlb=1 ['--flag', 'value']"
    assert _run({"MV2JAX_HUGEPAGES": "0"}) == "None ['--flag', 'value']"
