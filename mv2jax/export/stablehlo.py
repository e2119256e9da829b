"""StableHLO: `jax.export` of the BN-folded network with lax convolutions (`conv_impl='xla'`), the weights embedded
as constants, lowered for cpu, cuda and tpu in one serialized artifact.

Input: float32 NHWC `[batch, H, W, 3]` (normalised as the sidecar says), `batch` symbolic unless a batch size is
fixed. Output: logits `[batch, num_classes]`. Read it back with `jax.export.deserialize(data).call(x)`; JAX refuses
artifacts older than its compatibility window (about six months of StableHLO versions), so re-export after
upgrading JAX far past the exporting version.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mv2jax.models import FusedMobileNetV2, MobileNetV2, fuse_for_inference

PLATFORMS = ("cpu", "cuda", "tpu")


def exported(fused: FusedMobileNetV2, img_size: tuple[int, int], batch_size: int | None) -> jax.export.Exported:
    """The `jax.export.Exported` of `fused` (built with `conv_impl='xla'`) for `img_size` (H, W) inputs, a fixed
    or a symbolic batch."""
    if fused.spec.conv_impl != "xla":
        raise ValueError(f"StableHLO export takes the 'xla' formulation, got conv_impl={fused.spec.conv_impl!r}")
    params = fused.params
    h, w = img_size
    batch = batch_size if batch_size else "b"
    shape = jax.export.symbolic_shape(f"{batch}, {h}, {w}, {fused.in_chans}")
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.export.export(jax.jit(lambda x: fused.apply(params, x)), platforms=PLATFORMS)(x)


def serialize(model: MobileNetV2, img_size: tuple[int, int], batch_size: int | None, layout: str) -> bytes:
    """The serialized artifact (`layout` is always 'nhwc', JAX's)."""
    return bytes(exported(fuse_for_inference(model, conv_impl="xla"), img_size, batch_size).serialize())


def runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """`run(x)` -> logits of a StableHLO artifact, deserialized and run by JAX on the default backend."""
    artifact = jax.export.deserialize(bytearray(Path(path).read_bytes()))
    call = jax.jit(artifact.call)
    return lambda x: np.asarray(call(jnp.asarray(x, jnp.float32)))
