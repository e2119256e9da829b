"""Subprocess of test_multihost.py: one of `num_processes` JAX processes (1 CPU device each) joined through
`initialize_distributed` (gloo collectives). Together they train the tiny network on a `data` mesh spanning all
processes, each feeding only its own contiguous slice of every global batch, and process 0 writes the final
parameters, BN statistics and EMA (as a timm state dict) to an .npz file.

Float64 throughout (see `train`). usage: multihost_worker.py COORDINATOR_ADDRESS NUM_PROCESSES PROCESS_ID OUT.npz
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mv2jax.train.mesh import initialize_distributed  # noqa: E402

GLOBAL_BATCH = 8
STEPS = 3


def global_batches():
    from tests.train.reference import make_batches

    return make_batches(STEPS, GLOBAL_BATCH, 32, seed=5)


def local_slice(batch: dict, process_id: int, num_processes: int) -> dict:
    per = GLOBAL_BATCH // num_processes
    return {k: v[process_id * per : (process_id + 1) * per] for k, v in batch.items()}


def train(process_id: int = 0, num_processes: int = 1, stat_groups: int | None = None):
    """Train on the global mesh, feeding this process's slices; -> (model, EMA) timm state dicts, last loss.
    `num_processes=1` with `stat_groups` set is the single-process reference (no mesh). Float64 (call under
    `jax.enable_x64(True)`): a random network in train mode turns float32 reduction-order differences into
    ~1e-2 differences within 3 steps, which would hide real errors."""
    import jax
    import jax.numpy as jnp

    from mv2jax.train.mesh import bn_stat_groups, create_mesh, shard_batch, shard_train_state
    from mv2jax.train.state import create_train_state
    from mv2jax.train.step import StepConfig, make_train_step
    from tests.train.reference import Recipe, mv2jax_state_dicts, tiny_mv2jax

    mesh = create_mesh() if num_processes > 1 else None
    recipe = Recipe()
    schedule = recipe.schedule()
    tx = recipe.optax(schedule)
    graphdef, state = create_train_state(tiny_mv2jax(dtype=jnp.float64, param_dtype=jnp.float64), tx, use_ema=True)
    config = StepConfig(
        label_smoothing=recipe.smoothing,
        ema_decay=recipe.ema_decay,
        ema_warmup=recipe.ema_warmup,
        bn_stat_groups=stat_groups or bn_stat_groups(mesh),
    )
    step = make_train_step(graphdef, tx, schedule, config, mesh)
    if mesh is not None:
        state = shard_train_state(state, mesh)
    for batch in global_batches():
        local = local_slice(batch, process_id, num_processes)
        state, metrics = step(state, shard_batch(local, mesh) if mesh is not None else local)
    model, ema = mv2jax_state_dicts(graphdef, state)
    return model, ema, float(np.asarray(jax.device_get(metrics["loss"])))


def main(coordinator: str, num_processes: int, process_id: int, out: str) -> None:
    initialize_distributed(coordinator, num_processes, process_id)  # before any other JAX use
    import jax

    assert jax.process_count() == num_processes and jax.device_count() == num_processes, jax.devices()
    with jax.enable_x64(True):
        model, ema, loss = train(process_id, num_processes)
    np.savez(out, loss=loss, **{f"model/{k}": v for k, v in model.items()}, **{f"ema/{k}": v for k, v in ema.items()})
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
