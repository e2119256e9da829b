"""What a TPU or a GPU would run, proven on a CPU-only machine: the RA-recipe train step (fp32 and bf16, on one
device and data-parallel over an 8-device mesh) and the eval step, built with conv_impl 'xla' exactly as
train.py builds them, lowered for TPU and for CUDA (`mv2jax.lowering`), and read as StableHLO."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mv2jax.models.arch import build_block_specs
from mv2jax.models.registry import VARIANTS

MODEL = "mobilenetv2_035"
DEVICES = 8
# Custom calls JAX itself may emit in these programs, and why; anything else (a hand-written kernel, a
# CPU-only library call) fails the test. With Shardy (JAX's default partitioner) sharding is an attribute and
# none appears; under GSPMD the same markers are custom calls.
JAX_CUSTOM_CALLS = {
    "Sharding": "GSPMD's sharding annotation of a value",
    "SPMDFullToShardShape": "GSPMD's entry into a manually partitioned region",
    "SPMDShardToFullShape": "GSPMD's exit from a manually partitioned region",
}


def _lower(tmp_path: Path, *args: str) -> list[dict]:
    out = tmp_path / "lowered.json"
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "mv2jax.lowering", "--out", str(out), "--model", MODEL, *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def lowered(tmp_path_factory) -> dict[tuple[str, str], dict]:
    programs = _lower(tmp_path_factory.mktemp("lowering"))
    return {(p["platform"], p["name"]): p for p in programs}


CASES = [
    (platform, f"{what} {dtype} x{n}")
    for platform in ("tpu", "cuda")
    for what in ("train", "eval")
    for dtype in ("fp32", "bf16")
    for n in (1, DEVICES)
]


def _depthwise_channels() -> list[int]:
    return [spec.mid_chs for stage in build_block_specs(VARIANTS[MODEL][0]) for spec in stage]


def test_every_program_was_lowered(lowered):
    assert sorted(lowered) == sorted(CASES)


@pytest.mark.parametrize("platform,name", CASES)
def test_no_control_flow_and_no_foreign_custom_calls(lowered, platform, name):
    program = lowered[(platform, name)]
    assert program["control_flow"] == {}, f"{name} for {platform} has {program['control_flow']}"
    foreign = set(program["custom_calls"]) - set(JAX_CUSTOM_CALLS)
    assert not foreign, f"{name} for {platform} calls {sorted(foreign)}"
    assert program["ops"].get("stablehlo.convolution", 0) > 0  # the network is in there, as convolutions


@pytest.mark.parametrize("platform,name", CASES)
def test_depthwise_convolutions_are_grouped_convolutions(lowered, platform, name):
    """Every depthwise layer is one `convolution` with feature_group_count = its channels (3x3x1xC kernel); in
    the train step each also has its weight gradient as a convolution with batch_group_count = its channels."""
    convs = lowered[(platform, name)]["convolutions"]
    grouped = [c for c in convs if c["feature_group_count"] > 1]
    for c in grouped:
        channels = int(c["lhs"].split("x")[3])
        assert c["feature_group_count"] == channels, c
    channels = _depthwise_channels()
    # forward (and, in the train step, the input gradient: a grouped convolution too)
    passes = 2 if name.startswith("train") else 1
    assert sorted(c["feature_group_count"] for c in grouped) == sorted(channels * passes)
    weight_grads = [c for c in convs if c["batch_group_count"] > 1]
    if name.startswith("train"):
        assert sorted(c["batch_group_count"] for c in weight_grads) == sorted(channels)
        assert all(c["out"].startswith("3x3x1x") for c in weight_grads)
    else:
        assert weight_grads == []


@pytest.mark.parametrize("platform,name", [c for c in CASES if c[1].startswith("train")])
def test_batch_norm_statistics_stay_float32(lowered, platform, name):
    program = lowered[(platform, name)]
    assert program["bn_stat_dtypes"] == ["f32"]
    if "bf16" in name:  # the convolutions themselves do run in bf16
        assert any(c["lhs"].endswith("bf16") for c in program["convolutions"])


def test_the_checks_catch_the_cpu_backend(tmp_path):
    """The same checks on conv_impl 'cpu' (the XLA:CPU fast path) find what keeps it off accelerators: its
    conditionals and its convolutions as slices and matmuls (no grouped convolutions)."""
    (program,) = [
        p for p in _lower(tmp_path, "--conv-impl", "cpu", "--quick", "--platforms", "tpu") if "train" in p["name"]
    ]
    assert program["control_flow"].get("stablehlo.case", 0) > 0
    assert not any(c["feature_group_count"] > 1 for c in program["convolutions"])


@pytest.mark.parametrize("name", [c[1] for c in CASES if c[0] == "tpu" and c[1].startswith("train")])
def test_the_tpu_train_step_writes_batch_norm_statistics_into_one_buffer(lowered, name):
    """As train.py builds them (`step.stats_buffer_on`): for a TPU every BatchNorm after the first writes its
    statistics in place into one array (a dynamic_update_slice each), for a GPU none does."""
    from flax import nnx

    import mv2jax
    from mv2jax.models.layers import BatchNormAct2d

    layers = sum(isinstance(m, BatchNormAct2d) for _, m in nnx.iter_modules(mv2jax.create_model(MODEL)))
    updates = {p: lowered[p, name]["ops"].get("stablehlo.dynamic_update_slice", 0) for p in ("tpu", "cuda")}
    assert updates["tpu"] - updates["cuda"] == layers - 1, updates
