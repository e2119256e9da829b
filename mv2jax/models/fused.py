"""Fast inference: BatchNorm folded into the convolutions, the network as a pure function of a dict of arrays.

`fuse_for_inference(model)` turns an eval-ready MobileNetV2 into a `FusedMobileNetV2`: every block folds its own
conv + BatchNorm pairs (`Block.fold`: `w * gamma / sqrt(var + eps)`, `beta - mean * gamma / sqrt(var + eps)`,
in float64 on the host, then cast to the parameter dtype), so a forward pass is a convolution, a bias add and the
activation per layer, and the jitted call takes ~100 plain arrays instead of the module's ~300 NNX variables.

The network is a list of named blocks (`FusedBlock`: kind, folded convolutions, residual) that a backend
(`mv2jax.models.backends`) runs: it computes each folded convolution and block, runs the batch (at once or in
a loop) and names the compiler options. 'xla' is what accelerators run and what the exporters serialise.

Outputs equal the module's eval-mode outputs to float32 rounding (tests/models/test_fused.py checks both
against timm in float64).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mv2jax.models.backends import Backend, get_backend
from mv2jax.models.folded import ConvSpec, FusedBlock
from mv2jax.models.layers import fold_conv_bn
from mv2jax.models.mobilenetv2 import MobileNetV2, MobileNetV2Features, check_input
from mv2jax.models.pooling import global_pool_2d

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class FusedSpec:
    """The static half of a fused network: the stem, the blocks in order, the head, and the backend they run on."""

    stem: ConvSpec
    blocks: tuple[FusedBlock, ...]
    head: ConvSpec
    global_pool: str
    has_classifier: bool
    backend: Backend
    dtype: Any

    @property
    def conv_impl(self) -> str:
        return self.backend.name


def fused_forward_features(spec: FusedSpec, params: Params, x: jax.Array) -> jax.Array:
    """NHWC images -> unpooled features `[B, H/32, W/32, num_features]`, the whole batch at once."""
    backend = spec.backend
    x = backend.folded_conv(x.astype(spec.dtype), params["stem"], spec.stem)
    for block, layers in zip(spec.blocks, params["blocks"], strict=True):
        y = backend.folded_block(x, layers, block)
        x = y + x if block.skip else y
    return backend.folded_conv(x, params["head"], spec.head)


def fused_forward(spec: FusedSpec, params: Params, x: jax.Array) -> jax.Array:
    """NHWC images -> logits `[B, num_classes]` (pooled features without a classifier); whole batch at once."""
    x = global_pool_2d(fused_forward_features(spec, params, x), spec.global_pool)
    if spec.has_classifier:
        fc = params["classifier"]
        x = x @ fc["weight"].astype(x.dtype) + fc["bias"].astype(x.dtype)
    return x


class FusedMobileNetV2:
    """An inference-only MobileNetV2 with BatchNorm folded in. `fused(x)` -> logits (jitted, NHWC float input);
    `fused.params` (a dict of arrays) and `fused.apply(params, x)` (a pure function) to jit, shard or export it
    yourself. Created by `fuse_for_inference`."""

    def __init__(self, spec: FusedSpec, params: Params, *, in_chans: int, devices: int = 1):
        self.spec, self.params, self.in_chans, self.devices = spec, params, in_chans, devices
        self._jitted = jax.jit(self.apply, compiler_options=self.compiler_options)

    @property
    def compiler_options(self) -> dict[str, Any] | None:
        """XLA options the jitted call compiles with (pass them to your own `jax.jit` of `apply`)."""
        options = self.spec.backend.inference_compiler_options
        return None if options is None else dict(options)

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        """Logits of NHWC `x` (already checked) for `params` shaped like `self.params`: pure, jittable."""
        return self.spec.backend.run_batch(functools.partial(fused_forward, self.spec, params), x, self.devices)

    def loops_over_batch(self, batch: int) -> bool:
        """Whether `apply` computes a batch of `batch` images in a loop (XLA's cost analysis counts one pass)."""
        return self.spec.backend.loops_over_batch(batch, self.devices)

    def __call__(self, x) -> jax.Array:
        return self._jitted(self.params, check_input(x, self.in_chans))


def fuse_for_inference(
    model: MobileNetV2 | MobileNetV2Features, *, conv_impl: str | Backend | None = None, devices: int = 1
) -> FusedMobileNetV2:
    """`model` with each BatchNorm folded into its convolution (its running statistics: eval-mode semantics).

    conv_impl: the backend the folded network runs on; default the model's. 'xla' gives lax convolutions
    whatever the model was built with (what the exporters use).
    devices: how many devices the batch given to `apply` is sharded over; the backend runs the batch
    accordingly (XLA:CPU loops over small groups of images, which it can only do on one device).
    The model itself is not changed; fuse again after changing its weights."""
    if not isinstance(model, MobileNetV2):
        raise ValueError("fuse_for_inference needs a classification model: features_only models are not supported")
    backend = get_backend(conv_impl or model.backend)
    pdtype = np.dtype(model.param_dtype)
    blocks = [block for stage in model.blocks for block in stage]
    folded = [block.fold(pdtype) for block in blocks]
    stem_spec, stem = fold_conv_bn(model.conv_stem, model.bn1, pdtype)
    head_spec, head = fold_conv_bn(model.conv_head, model.bn2, pdtype)
    spec = FusedSpec(
        stem=stem_spec,
        blocks=tuple(block for block, _ in folded),
        head=head_spec,
        global_pool=model.global_pool,
        has_classifier=model.classifier is not None,
        backend=backend,
        dtype=model.dtype or pdtype,
    )
    params: Params = {"stem": stem, "blocks": [layers for _, layers in folded], "head": head}
    if model.classifier is not None:
        params["classifier"] = {k: np.asarray(getattr(model.classifier, k)[...]) for k in ("weight", "bias")}
    params = jax.tree.map(jnp.asarray, params)
    return FusedMobileNetV2(spec, params, in_chans=model.in_chans, devices=devices)
