"""The device mesh every jitted program runs on: one `data` axis over every device of every process, the batch
split along it and everything else replicated. Shared by training, `mv2jax.validate` and the data loader.

Device `i` of the mesh holds examples `[i*B/N, (i+1)*B/N)` of a global batch of `B` on `N` devices; the devices
are ordered by process, so each process's devices hold a contiguous part of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def create_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis `data` over `devices` (default: `jax.devices()`, all devices of all processes,
    ordered by process so each process's devices hold a contiguous part of the batch)."""
    devices = list(jax.devices() if devices is None else devices)
    devices.sort(key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`, other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def num_data_devices(mesh: Mesh) -> int:
    """How many devices the batch is split over."""
    return mesh.shape[DATA_AXIS]
