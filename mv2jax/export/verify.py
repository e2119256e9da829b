"""`python -m mv2jax.export --verify`: the artifact run in its own runtime against timm's model holding the same
weights, under the forward-parity rule. timm in float64 is the reference; the artifact's float32 logits may
differ from it (max|diff| over the batch / max|reference|) by at most twice timm's own float32 error on the same
input. Checked on a seeded random batch and on a photograph through the sidecar's preprocessing. Needs timm and
torch."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from mv2jax.convert.verify import timm_reference
from mv2jax.export.artifact import load_artifact, load_images
from mv2jax.models import MobileNetV2
from mv2jax.weights import mv2jax_to_timm

TOLERANCE_FACTOR = 2.0
RANDOM_BATCH = 4
SEED = 0


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    """max|out - ref| / max|ref| over the whole tensor, in float64."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(out - ref)) / (np.max(np.abs(ref)) or 1.0))


def timm_logits(tmodel, x_nhwc: np.ndarray, dtype) -> np.ndarray:
    """timm's output for an NHWC batch, computed in the torch `dtype`, as float64 numpy."""
    import torch

    model = copy.deepcopy(tmodel).to(dtype)
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))).to(dtype)
        return model(x).numpy().astype(np.float64)


def verify_artifact(model: MobileNetV2, path: Path, image: Path | None) -> bool:
    """Check the artifact at `path` (exported from `model`) against timm; prints a report, returns whether it
    passed."""
    import timm
    import torch

    run, sidecar = load_artifact(path)
    tmodel = timm_reference(model, mv2jax_to_timm(model))
    _, h, w = sidecar["input_size"]
    n = sidecar["batch_size"] or RANDOM_BATCH
    batches = {"random": np.random.default_rng(SEED).standard_normal((n, h, w, 3), dtype=np.float32)}
    if image is not None:
        batches[image.name] = np.repeat(load_images([image], sidecar), sidecar["batch_size"] or 1, axis=0)
    print(f"verify {path.name} ({sidecar['format']}) against timm {timm.__version__} in float64")
    ok = True
    for name, x in batches.items():
        ref = timm_logits(tmodel, x, torch.float64)
        ours, own = rel_err(run(x), ref), rel_err(timm_logits(tmodel, x, torch.float32), ref)
        passed = ours <= TOLERANCE_FACTOR * own
        ok &= passed
        shape = "x".join(map(str, x.shape))
        print(f"  {name:<12} {shape:<14} error {ours:.2e}  timm float32 {own:.2e}  {'ok' if passed else 'FAIL'}")
    print(f"verify: {'PASS' if ok else f'FAIL: error above {TOLERANCE_FACTOR:g}x timm float32, do not deploy it'}")
    return ok
