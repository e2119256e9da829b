"""mv2jax's accelerator train step is as lean as textbook Flax: train.py's RA step (`--amp`, the 'xla' backend)
and the plain Flax reference (`mv2jax/bench/reference_flax.py`: same network, optimizer family, EMA, global batch,
shardings and donation) compiled by XLA:TPU for a v5e 2x2 slice in one process; XLA's HBM bytes accessed and
temporaries per chip are held to the reference's.

The config keeps activations the bulk of the bytes (at a few images per chip the parameters and optimizer state,
the same on both sides, would hide a difference in the network's own traffic). Skips without libtpu (the tpu
extra)."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.accel

TOPOLOGY = "v5e:2x2"
MODEL, IMG_SIZE, PER_CHIP = "mobilenetv2_100", 96, 16
# Ceilings of mv2jax / reference per chip and step: the goal, 1.0 (the step measures 0.85 for bytes and 0.96 for
# temporaries here; 1.02 before the BatchNorm statistics buffer, BENCHMARKS.md).
MAX_BYTES_RATIO = 1.0
MAX_TEMP_RATIO = 1.0


@pytest.fixture(scope="session")
def compiled() -> dict[str, dict[str, float]]:
    """{'mv2jax' | 'reference': {'bytes': HBM bytes accessed, 'temp': temporaries}} per chip, both compiled here."""
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("libtpu is not installed (pip install -e '.[tpu]')")
    from mv2jax.accel.steps import build_steps, offline_config
    from mv2jax.accel.targets import parse_target, tpu_devices
    from mv2jax.bench.reference_flax import make_reference_step
    from mv2jax.lowering import ra_config
    from mv2jax.train.mesh import create_mesh

    devices = tpu_devices(parse_target(TOPOLOGY))
    config, _ = offline_config(ra_config(MODEL, amp=True, batch_size=PER_CHIP, img_size=IMG_SIZE, conv_impl="xla"))
    train = build_steps(config, devices).train
    reference = make_reference_step(create_mesh(devices), model=MODEL, batch_per_device=PER_CHIP, img_size=IMG_SIZE)
    out = {}
    for name, fn, args in (("mv2jax", train.fn, train.args), ("reference", reference.step, reference.args)):
        program = fn.lower(*args).compile()
        out[name] = {
            "bytes": float(program.cost_analysis()["bytes accessed"]),
            "temp": float(program.memory_analysis().temp_size_in_bytes),
        }
    print(out)
    return out


def test_train_step_accesses_no_more_hbm_bytes_than_the_flax_reference(compiled):
    ours, ref = compiled["mv2jax"]["bytes"], compiled["reference"]["bytes"]
    assert ref > 0
    assert ours <= MAX_BYTES_RATIO * ref, f"mv2jax {ours / 1e9:.3f} GB vs reference {ref / 1e9:.3f} GB per chip"


def test_train_step_needs_no_more_temporaries_than_the_flax_reference(compiled):
    ours, ref = compiled["mv2jax"]["temp"], compiled["reference"]["temp"]
    assert ref > 0
    assert ours <= MAX_TEMP_RATIO * ref, f"mv2jax {ours / 1e6:.1f} MB vs reference {ref / 1e6:.1f} MB per chip"
