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


def exported(
    fused: FusedMobileNetV2,
    img_size: tuple[int, int],
    batch_size: int | None,
    layout: str = "nhwc",
    platforms: tuple[str, ...] = PLATFORMS,
) -> jax.export.Exported:
    """The `jax.export.Exported` of `fused` (built with `conv_impl='xla'`) for `img_size` (H, W) inputs, a fixed
    or a symbolic batch, lowered for `platforms`. With `layout='nchw'` the input is `[batch, 3, H, W]`, transposed
    once at the start (and an unpooled feature map back at the end)."""
    if fused.spec.conv_impl != "xla":
        raise ValueError(f"StableHLO export takes the 'xla' formulation, got conv_impl={fused.spec.conv_impl!r}")
    params = fused.params
    h, w = img_size
    batch = batch_size if batch_size else "b"
    dims = (h, w, fused.in_chans) if layout == "nhwc" else (fused.in_chans, h, w)
    x = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"{batch}, {dims[0]}, {dims[1]}, {dims[2]}"), jnp.float32)

    def forward(x: jax.Array) -> jax.Array:
        if layout == "nhwc":
            return fused.apply(params, x)
        y = fused.apply(params, x.transpose(0, 2, 3, 1))
        return y.transpose(0, 3, 1, 2) if y.ndim == 4 else y

    return jax.export.export(jax.jit(forward), platforms=platforms)(x)


def serialize(model: MobileNetV2, img_size: tuple[int, int], batch_size: int | None, layout: str) -> bytes:
    """The serialized artifact (`layout` is always 'nhwc', JAX's)."""
    return bytes(exported(fuse_for_inference(model, conv_impl="xla"), img_size, batch_size, layout).serialize())


def runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """`run(x)` -> logits of a StableHLO artifact, deserialized and run by JAX on the default backend."""
    artifact = jax.export.deserialize(bytearray(Path(path).read_bytes()))
    call = jax.jit(artifact.call)
    return lambda x: np.asarray(call(jnp.asarray(x, jnp.float32)))
