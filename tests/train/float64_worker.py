"""Subprocess of test_step.py (run beside the other step tests, so the float64 compile of the full network
overlaps with theirs): 5 train steps of mobilenetv2_035 by timm (torch float64) and by mv2jax (float64 under
`jax.enable_x64`) from the same weights on the same batches; prints one JSON line of measured errors.
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

import mv2jax  # noqa: E402
from tests.train.reference import (  # noqa: E402
    NUM_CLASSES,
    Recipe,
    global_rel_error,
    make_batches,
    mv2jax_state_dicts,
    mv2jax_train,
    rel_errors,
    worst,
)
from tests.train.timm_side import load_timm, state_dict_numpy, timm_named, timm_train  # noqa: E402

MODEL = "mobilenetv2_035"
STEPS, BATCH, SIZE = 5, 8, 32


def main() -> None:
    recipe = Recipe()
    batches = make_batches(STEPS, BATCH, SIZE)
    tmodel = timm_named(MODEL)
    ref, ref_ema, ref_lrs, ref_losses = timm_train(tmodel, batches, recipe, torch.float64)
    with jax.enable_x64(True):
        # conv_impl='xla' compiles faster in float64; the default CPU convolutions are trained in the float32 tests
        model = mv2jax.create_model(
            MODEL, num_classes=NUM_CLASSES, dtype=jnp.float64, param_dtype=jnp.float64, conv_impl="xla"
        )
        graphdef, state, metrics, _, recompiles = mv2jax_train(load_timm(model, tmodel), batches, recipe)
        ours, ours_ema = mv2jax_state_dicts(graphdef, state)
    out = {
        "dtype": str(ours["bn1.weight"].dtype),
        "model": worst(rel_errors(ours, ref)),
        "ema": worst(rel_errors(ours_ema, ref_ema)),
        "num_batches_tracked_equal": all(int(ours[k]) == int(ref[k]) for k in ref if k.endswith("tracked")),
        "moved": global_rel_error(ref, state_dict_numpy(tmodel)),
        "lrs": [float(m["lr"]) for m in metrics],
        "timm_lrs": ref_lrs,
        "losses": [float(m["loss"]) for m in metrics],
        "timm_losses": ref_losses,
        "recompiles": recompiles,
    }
    print("RESULT " + json.dumps(out, default=lambda x: np.asarray(x).tolist()))


if __name__ == "__main__":
    main()
