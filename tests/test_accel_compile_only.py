"""train.py --compile-only: train.py's steps compiled by XLA:TPU (libtpu topologies) and XLA:GPU (jax's CUDA plugin
with the shipped H100 spec) on this CPU-only machine.

Tests marked `accel` need libtpu / the CUDA plugin (the tpu and cuda extras, CI's accel venv) and skip without
them. The rest run anywhere: the target names, the version check's one-line errors (in an environment without
the packages), the batch search on a synthetic memory line, the HLO counting on a hand-written module.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mv2jax.accel import targets
from mv2jax.accel.compile_only import (
    REFINE_COMPILES,
    REFINE_WITHIN,
    StepReport,
    largest_fitting_batch,
    refine_largest,
)
from mv2jax.accel.hlo import hlo_stats
from mv2jax.cli import EXIT_BAD_INPUT, EXIT_DOES_NOT_FIT

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--model", "mobilenetv2_035", "--img-size", "32", "-b", "2", "--amp", "--num-classes", "10"]


def _has(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


HAS_LIBTPU, HAS_CUDA_PLUGIN = _has("libtpu"), _has("jax-cuda12-plugin")
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu (the tpu extra)")
needs_cuda = pytest.mark.skipif(not HAS_CUDA_PLUGIN, reason="needs jax's CUDA plugin (the cuda extra)")


def train_py(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


# --- anywhere ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["v5e:2x2", "v4:2x2x1", "v5e:4x4", "h100", "8xh100", "a100"])
def test_target_names_parse(name: str) -> None:
    target = targets.parse_target(name)
    assert target.platform == ("cuda" if name.endswith(("h100", "a100")) else "tpu")


@pytest.mark.parametrize("name", ["v9z:2x2", "tpu", "9xh100", "h100:2x2", ""])
def test_an_unknown_target_lists_the_valid_names(name: str) -> None:
    with pytest.raises(targets.TargetError) as e:
        targets.parse_target(name)
    assert "\n" not in str(e.value) and "v5e:2x2" in str(e.value) and "8xh100" in str(e.value)


def test_a_compiler_at_another_version_names_the_pip_command(monkeypatch) -> None:
    import jax

    monkeypatch.setattr(targets, "_installed", lambda dist: "0.0.1")
    for platform, extra in (("tpu", "tpu"), ("cuda", "cuda12")):
        with pytest.raises(targets.TargetError) as e:
            targets.check_compiler(platform)
        assert f'pip install "jax[{extra}]=={jax.__version__}"' in str(e.value) and "0.0.1" in str(e.value)


@pytest.mark.skipif(HAS_LIBTPU or HAS_CUDA_PLUGIN, reason="tests the environment without libtpu and the plugin")
@pytest.mark.parametrize(("target", "extra"), [("v5e:2x2", "tpu"), ("h100", "cuda12")])
def test_without_the_compiler_train_py_names_the_pip_command(target: str, extra: str) -> None:
    import jax

    done = train_py(*SMALL, "--compile-only", target, timeout=300)
    assert done.returncode == EXIT_BAD_INPUT, done.stderr[-2000:]
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 1 and f'pip install "jax[{extra}]=={jax.__version__}"' in errors[0], done.stderr


def _synthetic(capacity: int, base: int, per_image: int, compile_limit: int | None = None):
    """A measure function whose memory is `base + per_image * batch`; XLA refuses to compile above
    `compile_limit` (as XLA:TPU does past the HBM)."""
    calls = []

    def measure(batch: int) -> StepReport:
        calls.append(batch)
        if compile_limit is not None and base + per_image * batch > compile_limit:
            return StepReport("train", batch, capacity, 0.0, out_of_memory="RESOURCE_EXHAUSTED")
        return StepReport("train", batch, capacity, 0.0, argument_bytes=base, temp_bytes=per_image * batch)

    return measure, calls


@pytest.mark.parametrize("compile_limit", [None, 1000])
def test_the_largest_batch_comes_from_two_analyses_and_one_confirming_compile(compile_limit) -> None:
    capacity, base, per_image = 1000, 100, 7  # fits up to (1000 - 100) // 7 = 128
    measure, calls = _synthetic(capacity, base, per_image, compile_limit)
    failed = measure(512)
    found = largest_fitting_batch(measure, failed)
    assert found is not None and found.batch_per_device == (capacity - base) // per_image
    assert len(calls) == 1 + (2 if compile_limit else 1) + 1, calls  # the failed one, the line, one confirmation


@pytest.mark.parametrize("power", [0.8, 1.25])
def test_the_largest_batch_is_refined_when_memory_is_not_linear_in_the_batch(power) -> None:
    """XLA's memory grows less than linearly at large batches (rematerialisation, layouts) or more: the line's
    first guess is then short of the capacity, or over it, and the secant refinement lands within 2%."""
    capacity, base, scale = 20_000, 1_000, 40.0

    def total(batch: int) -> int:
        return base + int(scale * batch**power)

    calls = []

    def measure(batch: int) -> StepReport:
        calls.append(batch)
        return StepReport("train", batch, capacity, 0.0, argument_bytes=base, temp_bytes=total(batch) - base)

    true_max = max(b for b in range(1, 100_000) if total(b) <= capacity)
    found = largest_fitting_batch(measure, measure(8 * true_max))
    assert found is not None and total(found.batch_per_device) <= capacity, calls
    assert found.batch_per_device >= (1 - REFINE_WITHIN) * true_max, (found.batch_per_device, true_max, calls)
    assert len(calls) <= 3 + REFINE_COMPILES, calls  # the failed step, the line's second point, the refinement


def test_the_search_climbs_past_a_batch_where_memory_fell() -> None:
    """XLA:TPU rematerialises more at larger batches, and its memory can fall as the batch grows (v4 in fp32: 1,119
    images took less than 908). The secant through such a pair has no crossing above the fit; the search then
    scales the fit's temporaries to the capacity instead of stopping at 54% of the largest batch."""
    capacity, base = 10_000, 100

    def total(batch: int) -> int:
        return base + int((400 if batch < 550 else 300) * batch**0.5)

    calls = []

    def measure(batch: int) -> StepReport:
        calls.append(batch)
        return StepReport("train", batch, capacity, 0.0, argument_bytes=base, temp_bytes=total(batch) - base)

    true_max = max(b for b in range(1, 100_000) if total(b) <= capacity)
    found = refine_largest(measure, [measure(128), measure(256)])
    assert found is not None and total(found.batch_per_device) <= capacity, calls
    assert found.batch_per_device >= 0.8 * true_max, (found.batch_per_device, true_max, calls)
    assert total(calls[3]) < total(calls[2]), calls  # the fall the secant cannot climb
    assert len(calls) <= 2 + REFINE_COMPILES, calls


def test_no_batch_fits_gives_none() -> None:
    measure, _ = _synthetic(capacity=50, base=100, per_image=7)
    assert largest_fitting_batch(measure, measure(8)) is None


HLO = """HloModule m
%fused_computation (p: f32[4,8]) -> f32[4,8] {
  %p = f32[4,8]{1,0} parameter(0)
  ROOT %n = f32[4,8]{1,0} negate(%p)
}
ENTRY %main (a: f32[4,8], w: bf16[3,3,8,8]) -> f32[4,8] {
  %a = f32[4,8]{1,0} parameter(0)
  %w = bf16[3,3,8,8]{3,2,1,0} parameter(1)
  %fusion = f32[4,8]{1,0} fusion(%a), kind=kLoop, calls=%fused_computation
  %conv = (bf16[4,8]{1,0}, u8[1024]{0}) custom-call(%fusion, %w), custom_call_target="__cudnn$convForward"
  ROOT %gte = f32[4,8]{1,0} get-tuple-element(%conv), index=0
}
"""


def test_hlo_stats_count_kernels_and_their_bytes() -> None:
    stats = hlo_stats(HLO)
    assert stats.fusions == 1 and stats.cudnn_convolutions == 1 and stats.convolutions == 0
    # fusion: 128 in + 128 out; cuDNN: 128 + 1152 in, 64 out (its u8 workspace is scratch, not counted)
    assert stats.kernel_bytes == (128 + 128) + (128 + 1152 + 64)


# --- with libtpu and the CUDA plugin (CI's accel venv) ----------------------------------------------------------------


@pytest.fixture(scope="session")
def small_report():
    """compile_check of the small RA config per target, each compiled once per test run."""
    from mv2jax.accel.compile_only import compile_check
    from mv2jax.lowering import ra_config

    cache: dict[str, dict] = {}

    def get(target: str) -> dict:
        if target not in cache:
            config = ra_config("mobilenetv2_035", amp=True, batch_size=2, img_size=32)
            cache[target] = compile_check(config, target, search=False)
        return cache[target]

    return get


@pytest.mark.accel
@needs_libtpu
@pytest.mark.parametrize("target", ["v5e:2x2", "v4:2x2x1"])
def test_tpu_compiles_train_and_eval_steps(small_report, target: str) -> None:
    report = small_report(target)
    assert report["devices"] == 4 and report["hosts"] == 1 and report["fits"], report
    train, evaluation = report["steps"]["train"], report["steps"]["eval"]
    # yardstick: a train step is a forward, a backward (about twice the forward) and the update (optimizer and
    # EMA: per parameter, so per image much more at 2 images than at 128)
    assert 2.5 < train["flops_per_image"] / evaluation["flops_per_image"] < 8.0, report
    assert train["hbm_bytes_per_image"] > evaluation["hbm_bytes_per_image"] > 0
    assert train["state_bytes"] > evaluation["state_bytes"]  # the optimizer state and the EMA
    assert set(report["versions"]) == {"jax", "jaxlib", "libtpu"}


@pytest.mark.accel
@needs_libtpu
def test_multi_host_tpu_slice_compiles(small_report) -> None:
    report = small_report("v5e:4x4")
    assert report["devices"] == 16 and report["hosts"] == 4 and report["fits"], report


@pytest.mark.accel
@needs_cuda
def test_h100_sends_every_convolution_to_cudnn(small_report) -> None:
    report = small_report("h100")
    assert report["fits"] and report["devices"] == 1
    train, evaluation = report["steps"]["train"], report["steps"]["eval"]
    for step in (train, evaluation):
        assert step["xla_convolutions"] == 0 and step["cudnn_convolutions"] > 0, step
    # 52 convolutions in the forward: the eval step has one call each; the train step adds the backward's
    assert evaluation["cudnn_convolutions"] == 52, evaluation["custom_calls"]
    assert train["custom_calls"].get("__cudnn$convBackwardFilter", 0) > 0
    assert train["cudnn_convolutions"] > 2 * evaluation["cudnn_convolutions"]
    assert 2.5 < train["flops_per_image"] / evaluation["flops_per_image"] < 8.0, report
    assert train["hbm_bytes_per_image"] > evaluation["hbm_bytes_per_image"] > 0


@pytest.mark.accel
@needs_cuda
def test_train_py_compile_only_fits_and_reports(tmp_path) -> None:
    done = train_py(*SMALL, "--data-dir", str(tmp_path / "absent"), "--compile-only", "h100")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "--data-dir ignored" in done.stdout and "cuDNN convolutions" in done.stdout
    assert "fits: both steps fit" in done.stdout and "jax-cuda12-plugin" in done.stdout
    assert not done.stderr.strip(), done.stderr[-3000:]  # libtpu's and the plugin's noise stays out


@pytest.mark.accel
@needs_cuda
def test_train_py_compile_only_names_the_largest_batch_that_fits() -> None:
    # a 40 MiB share of the GPU for JAX: 256 images of 32 px do not fit, a few dozen do
    share = str(40 * (1 << 20) / targets.GPU_CHIPS["h100"].memory_bytes)
    argv = ["--model", "mobilenetv2_035", "--img-size", "32", "-b", "256", "--amp", "--num-classes", "10"]
    done = train_py(*argv, "--compile-only", "h100", env={"XLA_PYTHON_CLIENT_MEM_FRACTION": share})
    assert done.returncode == EXIT_DOES_NOT_FIT, done.stdout[-3000:] + done.stderr[-3000:]
    found = re.search(r"largest per-chip batch that fits is -b (\d+)", done.stdout)
    assert found and 1 <= int(found.group(1)) < 256, done.stdout[-3000:]


def test_train_py_unknown_topology_is_one_line() -> None:
    done = train_py(*SMALL, "--compile-only", "v9z:2x2", timeout=300)
    assert done.returncode == EXIT_BAD_INPUT
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 1 and "v5e:2x2" in errors[0] and "unknown target" in errors[0], done.stderr
