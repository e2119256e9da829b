"""Fast inference: BatchNorm folded into the convolutions, the network as a pure function of a dict of arrays.

`fuse_for_inference(model)` turns an eval-ready MobileNetV2 into a `FusedMobileNetV2`: every block folds its own
conv + BatchNorm pairs (`Block.fold`: `w * gamma / sqrt(var + eps)`, `beta - mean * gamma / sqrt(var + eps)`,
in float64 on the host, then cast to the parameter dtype), so a forward pass is a convolution, a bias add and the
activation per layer, and the jitted call takes ~100 plain arrays instead of the module's ~300 NNX variables.

The layers run on a backend (`mv2jax.models.backends`): 'xla' (lax convolutions, the whole batch at once,
the compiler's defaults; what accelerators run and what the exporters serialise) or 'cpu' (its own block-level
fusions, batch loop and compiler options; see `backends/cpu.py`).

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

from mv2jax.models.backends import get_backend, resolve_conv_impl
from mv2jax.models.layers import ConvSpec, fold_conv_bn
from mv2jax.models.mobilenetv2 import MobileNetV2, check_input, global_pool_2d

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class FusedSpec:
    """The static half of a fused network: per block its folded convs in order and whether it has a residual."""

    stem: ConvSpec
    blocks: tuple[tuple[tuple[ConvSpec, ...], bool], ...]
    head: ConvSpec | None
    global_pool: str
    has_classifier: bool
    conv_impl: str
    dtype: Any


def fused_forward_features(spec: FusedSpec, params: Params, x: jax.Array) -> jax.Array:
    """NHWC images -> unpooled features `[B, H/32, W/32, num_features]`, the whole batch at once."""
    backend = get_backend(spec.conv_impl)
    x = backend.folded_conv(x.astype(spec.dtype), params["stem"], spec.stem)
    for (convs, skip), layers in zip(spec.blocks, params["blocks"], strict=True):
        y = backend.folded_block(x, layers, convs)
        x = y + x if skip else y
    return backend.folded_conv(x, params["head"], spec.head)


def fused_forward(spec: FusedSpec, params: Params, x: jax.Array) -> jax.Array:
    """NHWC images -> logits `[B, num_classes]` (pooled features without a classifier); whole batch at once."""
    x = global_pool_2d(fused_forward_features(spec, params, x), spec.global_pool)
    if spec.has_classifier:
        fc = params["classifier"]
        x = x @ fc["weight"].astype(x.dtype) + fc["bias"].astype(x.dtype)
    return x


def chunked(fn, x: jax.Array, chunk: int) -> jax.Array:
    """`fn(x)` computed over groups of `chunk` examples in a loop (the batch padded to a multiple of `chunk`)."""
    n = x.shape[0]
    if chunk <= 0 or n <= chunk:
        return fn(x)
    pad = -n % chunk
    if pad:
        x = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
    out = jax.lax.map(fn, x.reshape(-1, chunk, *x.shape[1:]))
    return out.reshape(-1, *out.shape[2:])[:n]


class FusedMobileNetV2:
    """An inference-only MobileNetV2 with BatchNorm folded in. `fused(x)` -> logits (jitted, NHWC float input);
    `fused.params` (a dict of arrays) and `fused.apply(params, x)` (a pure function) to jit, shard or export it
    yourself. Created by `fuse_for_inference`."""

    def __init__(self, spec: FusedSpec, params: Params, *, batch_chunk: int, in_chans: int):
        self.spec, self.params, self.batch_chunk, self.in_chans = spec, params, batch_chunk, in_chans
        self._jitted = jax.jit(self.apply, compiler_options=self.compiler_options)

    @property
    def compiler_options(self) -> dict[str, Any] | None:
        """XLA options the jitted call compiles with (pass them to your own `jax.jit` of `apply`)."""
        return get_backend(self.spec.conv_impl).INFERENCE_COMPILER_OPTIONS

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        """Logits of NHWC `x` (already checked) for `params` shaped like `self.params`: pure, jittable."""
        return chunked(functools.partial(fused_forward, self.spec, params), x, self.batch_chunk)

    def __call__(self, x) -> jax.Array:
        return self._jitted(self.params, check_input(x, self.in_chans))


def fuse_for_inference(
    model: MobileNetV2, *, conv_impl: str | None = None, batch_chunk: int | None = None
) -> FusedMobileNetV2:
    """`model` with each BatchNorm folded into its convolution (its running statistics: eval-mode semantics).

    conv_impl: the backend the folded network runs on; default the model's. 'xla' gives lax convolutions
    whatever the model was built with (what the exporters use).
    batch_chunk: images per group when a batch is processed as a loop over groups; default the backend's
    (2 on 'cpu', which keeps a group's activations in cache; 0, the whole batch, on 'xla').
    The model itself is not changed; fuse again after changing its weights."""
    if model.features_only:
        raise ValueError("fuse_for_inference needs a classification model: features_only models are not supported")
    impl = resolve_conv_impl(conv_impl or model.conv_impl)
    if batch_chunk is None:
        batch_chunk = get_backend(impl).INFERENCE_BATCH_CHUNK
    pdtype = np.dtype(model.param_dtype)
    blocks = [block for stage in model.blocks for block in stage]
    folded = [block.fold(pdtype) for block in blocks]
    stem_spec, stem = fold_conv_bn(model.conv_stem, model.bn1, pdtype)
    head_spec, head = fold_conv_bn(model.conv_head, model.bn2, pdtype)
    spec = FusedSpec(
        stem=stem_spec,
        blocks=tuple((convs, block.has_skip) for (convs, _), block in zip(folded, blocks, strict=True)),
        head=head_spec,
        global_pool=model.global_pool,
        has_classifier=model.classifier is not None,
        conv_impl=impl,
        dtype=model.dtype or pdtype,
    )
    params: Params = {"stem": stem, "blocks": [layers for _, layers in folded], "head": head}
    if model.classifier is not None:
        params["classifier"] = {k: np.asarray(getattr(model.classifier, k)[...]) for k in ("weight", "bias")}
    params = jax.tree.map(jnp.asarray, params)
    return FusedMobileNetV2(spec, params, batch_chunk=batch_chunk, in_chans=model.in_chans)
