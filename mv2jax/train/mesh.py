"""Data parallelism for training: the mesh and shardings of `mv2jax.mesh` (re-exported here), placing train
states and batches on it, multi-host start-up, and timm's BatchNorm distribution modes.

Parameters, optimizer state and EMA are replicated; each batch is split along its leading axis over `data`
(device `i` of the mesh holds examples `[i*B/N, (i+1)*B/N)`). With several processes (hosts), every process
builds the same mesh from `jax.devices()` and feeds only its own slice of each global batch (`shard_batch`).

BatchNorm, as timm without `--sync-bn`: statistics per device. The model computes train-mode statistics per
group of `B/N` contiguous examples (`model.set_bn_stat_groups(N)`, `StepConfig.bn_stat_groups`), and those
groups are exactly the per-device shards. `--sync-bn` is one group (statistics over the global batch).
timm's `--dist-bn` (what the ranks' running statistics become at epoch end) is then which groups feed the running
statistics at every step (`dist_bn_running_stats`, `StepConfig.bn_running_stats`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from mv2jax.data.loader import to_global_batch
from mv2jax.mesh import DATA_AXIS as DATA_AXIS
from mv2jax.mesh import batch_sharding as batch_sharding
from mv2jax.mesh import create_mesh as create_mesh
from mv2jax.mesh import num_data_devices as num_data_devices
from mv2jax.mesh import replicated as replicated
from mv2jax.train.config import DIST_BN_MODES


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    cpu_collectives: str = "gloo",
    local_device_ids: Sequence[int] | None = None,
) -> None:
    """Join a multi-process JAX run (`jax.distributed.initialize`); call before any other JAX use.

    `coordinator_address` is 'host:port' of process 0, reachable by all; `process_id` in [0, num_processes).
    Left as None, JAX detects them on TPU pods and SLURM / Open MPI clusters. On the CPU backend
    cross-process collectives need an implementation (`cpu_collectives`, 'gloo' by default; '' leaves JAX's
    setting), which must be chosen before initialising."""
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
    )


def bn_stat_groups(mesh: Mesh, sync_bn: bool = False) -> int:
    """BatchNorm statistic groups: 1 with `--sync-bn`, else one per data-parallel device (timm's per-GPU BN)."""
    return 1 if sync_bn else num_data_devices(mesh)


def shard_train_state(state: Any, mesh: Mesh) -> Any:
    """Place a train state (any pytree of arrays, identical on every process, e.g. built from the same seed or
    checkpoint) replicated over the mesh. Each process fills its own devices from its own copy: no
    cross-process traffic (`jax.device_put` would check equality across processes leaf by leaf)."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: _replicate(x, sharding), state)


def _replicate(x: Any, sharding: NamedSharding) -> jax.Array:
    if isinstance(x, jax.Array):
        if x.sharding == sharding:
            return x
        x = local_copy(x)
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = _replicate(jax.random.key_data(x), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def local_copy(x: Any) -> Any:
    """A single-device copy of a replicated multi-device array (its first local shard, so it also works for
    arrays spanning other processes); anything else unchanged."""
    if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1:
        if not x.is_fully_replicated:
            raise ValueError(f"expected a replicated array, got one sharded as {x.sharding}")
        return x.addressable_data(0)
    return x


def shard_batch(local_batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's slice of a global batch (host arrays, leading axis = local batch) -> global arrays split
    over `data`. Every process passes its own `B / num_processes` examples, in process order."""
    return to_global_batch(local_batch, mesh, batch_sharding(mesh))


def dist_bn_running_stats(mode: str, stat_groups: int = 1) -> str:
    """timm's `--dist-bn` as the BatchNorm `running_stats_from` of the train step ('mean' or 'first').

    timm keeps BatchNorm running statistics per GPU (each an EMA of its own examples' batch statistics) and at
    epoch end (model, then EMA model):
    - 'reduce' (the default): all-reduce mean over ranks. The update `r <- 0.9 r + 0.1 s` is linear, so updating
      one set of running statistics every step with the mean over the stat groups (= devices) always equals the
      mean of timm's per-rank statistics, and so does the EMA of it: 'mean'.
    - 'broadcast': every rank takes rank 0's statistics. All ranks start each epoch equal, so that is running
      statistics updated every step with stat group 0 only (device 0's contiguous slice of the global batch),
      and the EMA of them: 'first'.
    - '': no sync; each rank validates with its own statistics on its shard of the eval set, rank 0's are saved.
      mv2jax keeps one set of statistics: rank 0's, i.e. 'first' (what timm saves; the eval then uses rank 0's
      statistics on every shard, where timm's used each rank's own).
    With one stat group (`--sync-bn`, or one device) all modes agree; 'mean' is returned.
    """
    if mode not in DIST_BN_MODES:
        raise ValueError(f"--dist-bn must be one of {DIST_BN_MODES}, got {mode!r}")
    return "mean" if mode == "reduce" or stat_groups == 1 else "first"
