"""Subprocess of test_sharding.py: needs 8 host devices (XLA_FLAGS=--xla_force_host_platform_device_count=8,
set by the parent before JAX starts). Trains the tiny network in float64 for a few steps and
prints one JSON line of measured relative errors (float64: a random network in train mode is chaotic, so
float32 summation-order differences between 1 and 8 devices grow to ~1e-2 in a few steps):

- sync_bn: 8-device mesh with `--sync-bn` (1 stat group) vs a 1-device mesh, same global batches;
- per_device_bn: 8-device mesh with 8 stat groups vs 8 emulated timm DDP ranks (each rank its slice of the batch,
  gradients averaged, running statistics averaged at each epoch end = `--dist-bn reduce`), model and EMA;
- per_device_bn_broadcast / _no_sync: the same with `--dist-bn broadcast` / `--dist-bn ''` (rank 0's running
  statistics; mv2jax's step feeds them from stat group 0 only), model and EMA of rank 0;
- eval: the eval step on the 8-device mesh vs unsharded, same padded batch (EMA weights).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mv2jax.train.mesh import (  # noqa: E402
    bn_stat_groups,
    create_mesh,
    dist_bn_running_stats,
    local_copy,
    shard_batch,
)
from mv2jax.train.step import make_eval_step  # noqa: E402
from tests.train.reference import (  # noqa: E402
    Recipe,
    make_batches,
    mv2jax_state_dicts,
    mv2jax_train,
    rel_errors,
    tiny_mv2jax,
    worst,
)
from tests.train.timm_side import load_timm, timm_train, tiny_timm  # noqa: E402

DEVICES = 8
GLOBAL_BATCH = 16  # 2 examples per device
STEPS = 3


def run(tmodel, batches, recipe, mesh, groups, dist_bn="reduce", stats_buffer=False):
    """Float64 training on `mesh` with timm's `--dist-bn` (`stats_buffer`: `StepConfig.bn_stats_buffer`, as on a
    TPU); -> ((model, EMA) state dicts, losses, (graphdef, state))."""
    model = load_timm(tiny_mv2jax(dtype=jnp.float64, param_dtype=jnp.float64), tmodel)
    graphdef, state, metrics, _, recompiles = mv2jax_train(
        model,
        batches,
        recipe,
        bn_stat_groups=groups,
        bn_running_stats=dist_bn_running_stats(dist_bn, groups),
        bn_stats_buffer=stats_buffer,
        mesh=mesh,
    )
    assert recompiles == 0, f"the sharded step compiled {recompiles} more times after its first call"
    return mv2jax_state_dicts(graphdef, state), [float(m["loss"]) for m in metrics], (graphdef, state)


def eval_sums(graphdef, state, batch, mesh):
    """EMA-weight eval metrics of a padded batch, on `mesh` (batch split over it) or unsharded (mesh None)."""
    evaluate = make_eval_step(graphdef, state.rng_state, mesh)
    batch = shard_batch(batch, mesh) if mesh is not None else batch
    out = evaluate(state.ema["params"], state.ema["batch_stats"], batch)
    return {k: float(v) for k, v in jax.device_get(out).items()}


def main() -> None:
    assert jax.device_count() == DEVICES, jax.devices()
    recipe = Recipe()
    batches = make_batches(STEPS, GLOBAL_BATCH, 32, seed=3)
    tmodel = tiny_timm()
    mesh8, mesh1 = create_mesh(), create_mesh(jax.devices()[:1])
    out = {}
    with jax.enable_x64(True):
        (sync8, sync8_ema), loss8, _ = run(tmodel, batches, recipe, mesh8, bn_stat_groups(mesh8, sync_bn=True))
        (sync1, sync1_ema), loss1, _ = run(tmodel, batches, recipe, mesh1, bn_stat_groups(mesh1))
        out["sync_bn_f64"] = worst(rel_errors(sync8, sync1)) + worst(rel_errors(sync8_ema, sync1_ema))
        (per8, per8_ema), _, (graphdef, state) = run(tmodel, batches, recipe, mesh8, bn_stat_groups(mesh8))
        eval_batch = dict(batches[0], mask=np.arange(GLOBAL_BATCH) < GLOBAL_BATCH - 3)
        out["eval_sharded"] = eval_sums(graphdef, state, eval_batch, mesh8)
        out["eval_unsharded"] = eval_sums(graphdef, jax.tree.map(local_copy, state), eval_batch, None)
        (first8, first8_ema), _, _ = run(tmodel, batches, recipe, mesh8, bn_stat_groups(mesh8), "broadcast")
        buffered = {
            mode: run(tmodel, batches, recipe, mesh8, bn_stat_groups(mesh8), mode, stats_buffer=True)[0]
            for mode in ("reduce", "broadcast")
        }
    ref, ref_ema, _, _ = timm_train(tmodel, batches, recipe, torch.float64, replicas=DEVICES)
    out["per_device_bn_f64"] = worst(rel_errors(per8, ref)) + worst(rel_errors(per8_ema, ref_ema))
    out["stats_buffer_reduce_f64"] = worst(rel_errors(buffered["reduce"][0], ref)) + worst(
        rel_errors(buffered["reduce"][1], ref_ema)
    )
    for mode, name in (("broadcast", "per_device_bn_broadcast_f64"), ("", "per_device_bn_no_sync_f64")):
        ref, ref_ema, _, _ = timm_train(tmodel, batches, recipe, torch.float64, replicas=DEVICES, dist_bn=mode)
        out[name] = worst(rel_errors(first8, ref)) + worst(rel_errors(first8_ema, ref_ema))
        if mode == "broadcast":
            model, ema = buffered["broadcast"]
            out["stats_buffer_broadcast_f64"] = worst(rel_errors(model, ref)) + worst(rel_errors(ema, ref_ema))
    out["broadcast_differs_from_reduce"] = worst(rel_errors(first8, per8))
    sync_ref, *_ = timm_train(tmodel, batches, recipe, torch.float64, replicas=1)
    out["per_device_differs_from_sync"] = worst(rel_errors(per8, sync_ref))
    out["loss_f64"] = [loss8, loss1]
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
