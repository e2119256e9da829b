"""Data-parallel training on an 8-device mesh (a subprocess with 8 forced host devices: this process keeps its
own XLA_FLAGS) against 1 device and against 8 emulated timm DDP ranks; plus the mesh helpers and timm's
`--dist-bn` modes in this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mv2jax.train.mesh import (
    DATA_AXIS,
    batch_sharding,
    bn_stat_groups,
    create_mesh,
    dist_bn_running_stats,
    replicated,
    shard_batch,
    shard_train_state,
)
from tests.train.devices import TOL_F64, xla_flags

pytestmark = [pytest.mark.numerics, pytest.mark.timm]  # timm: the worker compares against it

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("sharding_worker.py")
TIMEOUT_S = 600
# the eval step's float32 loss sum over the worker's 16 examples, sharded or not: at most one rounding per term
EVAL_RTOL = 16 * float(np.finfo(np.float32).eps)


@pytest.fixture(scope="module")
def eight_devices() -> dict:
    """Run sharding_worker.py with 8 host devices; its measured errors."""
    env = dict(os.environ, XLA_FLAGS=xla_flags(8), JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(WORKER)], cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    print(result)
    return result


def test_sync_bn_on_8_devices_equals_1_device(eight_devices):
    _, model_err, _, ema_err = eight_devices["sync_bn_f64"]
    assert model_err < TOL_F64 and ema_err < TOL_F64


def test_per_device_bn_equals_timm_ddp_ranks_with_dist_bn_reduce(eight_devices):
    _, model_err, _, ema_err = eight_devices["per_device_bn_f64"]
    assert model_err < TOL_F64 and ema_err < TOL_F64
    assert eight_devices["per_device_differs_from_sync"][1] > 1e-2  # the BN mode is visible in the results


def test_per_device_bn_equals_timm_ddp_rank_0_with_dist_bn_broadcast(eight_devices):
    """timm's `--dist-bn broadcast` (rank 0's running statistics to all at each epoch end) = mv2jax feeding the
    running statistics from stat group 0 (device 0's slice) at every step."""
    _, model_err, _, ema_err = eight_devices["per_device_bn_broadcast_f64"]
    assert model_err < TOL_F64 and ema_err < TOL_F64
    assert eight_devices["broadcast_differs_from_reduce"][1] > 1e-2  # the running statistics really differ


def test_per_device_bn_equals_timm_ddp_rank_0_with_dist_bn_none(eight_devices):
    """timm's `--dist-bn ''` (no sync) saves rank 0's statistics: what mv2jax keeps (as for 'broadcast')."""
    _, model_err, _, ema_err = eight_devices["per_device_bn_no_sync_f64"]
    assert model_err < TOL_F64 and ema_err < TOL_F64


@pytest.mark.parametrize("mode", ["reduce", "broadcast"])
def test_per_device_bn_through_one_stats_buffer_equals_timm_ddp(eight_devices, mode):
    """The TPU step's BatchNorm statistics buffer (`StepConfig.bn_stats_buffer`) gives timm DDP's running
    statistics for `--dist-bn reduce` and `broadcast` alike."""
    _, model_err, _, ema_err = eight_devices[f"stats_buffer_{mode}_f64"]
    assert model_err < TOL_F64 and ema_err < TOL_F64


def test_eval_step_on_8_devices_equals_unsharded(eight_devices):
    sharded, unsharded = eight_devices["eval_sharded"], eight_devices["eval_unsharded"]
    assert sharded["count"] == unsharded["count"] == 13  # 16 examples, the last 3 padding
    assert sharded["top1"] == unsharded["top1"] and sharded["top5"] == unsharded["top5"]
    np.testing.assert_allclose(sharded["loss_sum"], unsharded["loss_sum"], rtol=EVAL_RTOL)


def test_mesh_and_shardings_on_this_process():
    mesh = create_mesh()
    assert mesh.axis_names == (DATA_AXIS,) and mesh.devices.size == jax.device_count()
    assert bn_stat_groups(mesh) == jax.device_count() and bn_stat_groups(mesh, sync_bn=True) == 1
    n = 2 * jax.device_count()
    batch = shard_batch({"image": np.zeros((n, 4, 4, 3), np.float32), "label": np.arange(n)}, mesh)
    assert batch["image"].sharding == batch_sharding(mesh) and batch["image"].shape == (n, 4, 4, 3)
    state = shard_train_state({"w": jnp.ones(3), "key": jax.random.key(0), "step": np.int32(4)}, mesh)
    assert all(x.sharding == replicated(mesh) for x in jax.tree.leaves(state))
    assert jax.random.key_impl(state["key"]) == jax.random.key_impl(jax.random.key(0))
    np.testing.assert_array_equal(jax.random.key_data(state["key"]), jax.random.key_data(jax.random.key(0)))


def test_dist_bn_modes_map_to_running_stats_from():
    assert dist_bn_running_stats("reduce", 8) == "mean"  # mean over devices, every step
    assert dist_bn_running_stats("broadcast", 8) == dist_bn_running_stats("", 8) == "first"  # rank 0's
    assert all(dist_bn_running_stats(mode, 1) == "mean" for mode in ("reduce", "broadcast", ""))  # one set
    with pytest.raises(ValueError, match="must be one of"):
        dist_bn_running_stats("mean", 8)
