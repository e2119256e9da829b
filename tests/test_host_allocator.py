"""`train.py --host-allocator {auto,on,off}`: 'auto' is on only for JAX's CPU backend, decided without importing
JAX (from JAX_PLATFORMS, else from whether an accelerator plugin is installed); a GPU/TPU host never re-executes;
the run log says which setting is in force and why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mv2jax import host_memory
from mv2jax.host_memory import OPT_OUT, accelerator_plugins, decide
from mv2jax.train.config import host_allocator_setting, parse_config

REPO = Path(__file__).resolve().parents[1]
OLD_STEP_DIR = REPO / "tests" / "train" / "data" / "checkpoint_8886536" / "2"


@pytest.mark.parametrize(
    ("environ", "plugins", "on"),
    [
        ({"JAX_PLATFORMS": "cpu"}, [], True),
        ({"JAX_PLATFORMS": "cpu"}, ["jax_cuda12_plugin"], True),  # JAX_PLATFORMS decides what JAX runs on
        ({"JAX_PLATFORMS": "cuda"}, [], False),
        ({"JAX_PLATFORMS": "tpu,cpu"}, [], False),
        ({}, [], True),
        ({}, ["jax_cuda12_plugin"], False),
        ({}, ["libtpu"], False),
        ({OPT_OUT: "0"}, [], False),
    ],
)
def test_auto_is_on_only_for_the_cpu_backend(environ, plugins, on):
    decision = decide("auto", environ, plugins)
    assert decision.on is on, decision
    assert decision.reason.startswith("auto")


def test_on_and_off_are_what_they_say_and_on_wins_over_the_variable():
    assert decide("on", {OPT_OUT: "0", "JAX_PLATFORMS": "cuda"}, ["libtpu"]).on
    assert not decide("off", {"JAX_PLATFORMS": "cpu"}, []).on
    with pytest.raises(ValueError, match="--host-allocator must be one of auto, on, off"):
        decide("sometimes")


def test_installed_plugins_are_found_without_importing_jax(tmp_path, monkeypatch):
    (tmp_path / "jax_cuda12_plugin").mkdir()
    (tmp_path / "jax_cuda12_plugin" / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (tmp_path / "jax_plugins" / "xla_fake").mkdir(parents=True)  # a PJRT plugin in JAX's namespace package
    (tmp_path / "jax_plugins" / "xla_fake" / "__init__.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.delenv(OPT_OUT, raising=False)
    found = accelerator_plugins()
    assert "jax_cuda12_plugin" in found and "jax_plugins.xla_fake" in found, found
    decision = decide("auto")
    assert not decision.on and "jax_cuda12_plugin" in decision.reason


def _reexec_child(setting: str, **environ: str) -> str:
    """GLIBC_TUNABLES as seen after `reexec_with_host_allocator(setting)`, and whether JAX was imported first."""
    code = (
        "import os, sys\n"
        "from mv2jax.host_memory import reexec_with_host_allocator\n"
        f"reexec_with_host_allocator({setting!r})\n"
        "print(os.environ.get('GLIBC_TUNABLES', ''), 'jax' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", OPT_OUT, "JAX_PLATFORMS")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env={**env, **environ}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(not host_memory.tunables(), reason="glibc malloc tunables do not apply here")
def test_a_gpu_host_never_reexecutes_and_a_cpu_host_does():
    assert _reexec_child("auto", JAX_PLATFORMS="cuda") == "False"
    assert _reexec_child("off", JAX_PLATFORMS="cpu") == "False"
    tunables, jax_imported = _reexec_child("auto", JAX_PLATFORMS="cpu").split()
    assert "glibc.malloc.mmap_max=0" in tunables and jax_imported == "False"


def test_flag_setting_from_the_command_line_and_yaml(tmp_path):
    assert host_allocator_setting([]) == "auto"
    assert host_allocator_setting(["--host-allocator", "off", "--model", "x"]) == "off"
    config = tmp_path / "c.yaml"
    config.write_text("host_allocator: on\n")
    assert host_allocator_setting(["-c", str(config)]) == "on"
    assert host_allocator_setting(["-c", str(config), "--host-allocator", "off"]) == "off"
    assert host_allocator_setting(["--host-allocator", "bad"]) == "off"  # no restart; the full parse reports it
    config.write_text("host_allocator: off\n")
    assert host_allocator_setting(["-c", str(config)]) == "off"
    assert parse_config(["-c", str(config)]).host_allocator == "off"
    assert parse_config(["--host-allocator", "on"]).host_allocator == "on"
    with pytest.raises(SystemExit) as e:
        parse_config(["--host-allocator", "bad"])
    assert e.value.code == 2


HEADERS = [("auto", "on (auto: JAX_PLATFORMS=cpu"), ("off", "off (--host-allocator off)")]


@pytest.mark.parametrize(("flag", "expect"), HEADERS)
def test_run_header_says_which_setting_is_in_force(flag, expect, tmp_path):
    """A resume of a complete run prints the header and stops: no training."""
    cmd = [sys.executable, "train.py", "--resume", str(OLD_STEP_DIR), "--model", "mobilenetv2_035"]
    cmd += ["--dataset", "digits", "--img-size", "32", "-b", "8", "--epochs", "2", "--steps-per-epoch", "1"]
    cmd += ["--model-ema", "--compile-cache", "", "-j", "0", "--output", str(tmp_path), "--host-allocator", flag]
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", OPT_OUT)}
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    line = next((x for x in done.stdout.splitlines() if x.startswith("Host allocator: ")), None)
    assert line is not None and expect in line, done.stdout
    in_force = flag == "auto" and bool(host_memory.tunables())
    assert ("glibc malloc with glibc.malloc.mmap_max=0" in line) is in_force, line
    assert "Training already complete" in done.stdout
