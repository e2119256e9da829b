"""Fast inference: BatchNorm folded into the convolutions, the network as a pure function of a dict of arrays.

`fuse_for_inference(model)` turns an eval-ready MobileNetV2 into a `FusedMobileNetV2`: every conv + BatchNorm
pair becomes one convolution with a bias (`w * gamma / sqrt(var + eps)`, `beta - mean * gamma / sqrt(var + eps)`,
computed in float64 on the host, then cast to the parameter dtype), so a forward pass is a conv, a bias add and
a ReLU6 per layer, and the jitted call takes ~100 plain arrays instead of the module's ~300 NNX variables.

On CPU (`conv_impl='cpu'`) it also:
- runs the stem as 27 broadcast multiply-adds in one fusion (XLA's dense 3x3 conv with 3 input channels is ~2x
  slower, an im2col matmul ~2.5x at batch 1);
- on the large grids, computes each expansion 1x1 conv on its depthwise conv's padded grid (the bias folded
  into the matmul), which saves a pass over the largest activations;
- runs a batch as a loop over groups of `batch_chunk` images, so that each group's activations (the 6x-expanded
  ones included) stay in cache from one layer to the next instead of streaming the whole batch through memory
  at every layer;
- compiles with XLA's own matmul emitter instead of its default YNNPACK dot fusions, which are slower on these
  small matmuls (measured on this network: ~1.05x at batch 1, ~1.1x at batch 32), and with 512-bit vectors
  preferred.
With `conv_impl='xla'` (accelerators) every conv is `lax.conv_general_dilated`, the batch is processed at once
and the compiler keeps its defaults.

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

from mv2jax.models.layers import BatchNormAct2d, Conv2d, conv2d
from mv2jax.models.mobilenetv2 import InvertedResidual, MobileNetV2, check_input, global_pool_2d
from mv2jax.models.ops import _depthwise_padded, _pad_hw, _tap, pointwise_conv

Params = dict[str, Any]
# No YNNPACK fusions: XLA emits the dots. 512-bit vectors where the CPU has them (LLVM prefers 256 bits on AVX-512
# CPUs otherwise; ignored without AVX-512): -1.5% at batch 1, -3% at batch 32 on a 2-core AVX-512 machine.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "", "xla_cpu_prefer_vector_width": 512}


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """Static description of one folded conv: kernel size, stride, symmetric padding, depthwise or dense, and
    whether ReLU6 follows."""

    kernel_size: int
    stride: int
    padding: int
    depthwise: bool
    relu6: bool


@dataclasses.dataclass(frozen=True)
class FusedSpec:
    """The static half of a fused network: per block its convs in order and whether it has a residual."""

    stem: ConvSpec
    blocks: tuple[tuple[tuple[ConvSpec, ...], bool], ...]
    head: ConvSpec | None
    global_pool: str
    has_classifier: bool
    conv_impl: str
    dtype: Any


def _fold(conv: Conv2d, bn: BatchNormAct2d, param_dtype) -> dict[str, np.ndarray]:
    """{'weight': HWIO kernel scaled per output channel, 'bias': [C_out]}, folded in float64."""
    f64 = functools.partial(np.asarray, dtype=np.float64)
    scale = f64(bn.weight[...]) / np.sqrt(f64(bn.running_var[...]) + bn.eps)
    weight = f64(conv.weight[...]) * scale
    bias = f64(bn.bias[...]) - f64(bn.running_mean[...]) * scale
    return {"weight": weight.astype(param_dtype), "bias": bias.astype(param_dtype)}


def _spec(conv: Conv2d, bn: BatchNormAct2d) -> ConvSpec:
    return ConvSpec(conv.kernel_size, conv.stride, conv.padding, conv.is_depthwise, bn.apply_act)


def _block_layers(block) -> list[tuple[Conv2d, BatchNormAct2d]]:
    if isinstance(block, InvertedResidual):
        return [(block.conv_pw, block.bn1), (block.conv_dw, block.bn2), (block.conv_pwl, block.bn3)]
    return [(block.conv_dw, block.bn1), (block.conv_pw, block.bn2)]


def _conv(x: jax.Array, p: Params, spec: ConvSpec, impl: str) -> jax.Array:
    w, b = p["weight"].astype(x.dtype), p["bias"].astype(x.dtype)
    k, s, pad = spec.kernel_size, spec.stride, spec.padding
    if impl == "cpu" and not spec.depthwise and k > 1 and x.shape[-1] * k * k <= 64:  # the stem: k*k*C_in FMAs
        xp = _pad_hw(x, pad)
        oh, ow = (xp.shape[1] - k) // s + 1, (xp.shape[2] - k) // s + 1
        terms = [
            _tap(xp, i, j, s, oh, ow)[..., c : c + 1] * w[i, j, c]
            for i in range(k)
            for j in range(k)
            for c in range(x.shape[-1])
        ]
        while len(terms) > 1:  # pairwise sum: float32 error grows with log2(27), not 27, as in a dot
            terms = [a + b for a, b in zip(terms[::2], terms[1::2], strict=False)] + terms[len(terms) // 2 * 2 :]
        y = terms[0]
    else:
        y = conv2d(x, w, s, pad, x.shape[-1] if spec.depthwise else 1, impl)
    y = y + b
    return jnp.clip(y, 0.0, 6.0) if spec.relu6 else y


# Inverted residuals whose input has at least this many positions (the 112x112 and 56x56 stages) take the padding
# of their depthwise conv into the expansion matmul (`_expand_padded`); on smaller grids the extra border rows of
# the matmul cost more than the pass they save (measured at batch 1 and 32).
PAD_INTO_EXPAND_MIN_POSITIONS = 56 * 56


def _expand_padded(x: jax.Array, p: Params, pad: int) -> jax.Array:
    """The expansion 1x1 conv's pre-activation on the zero-padded grid its depthwise conv reads. `x` gets a
    channel of ones (zeros in the padding) that multiplies the bias, so the border comes out exactly 0 (= ReLU6
    of it) and the depthwise taps read ReLU6 of the matmul directly: the separate bias + ReLU6 + pad pass over
    the 6x-expanded activation goes away."""
    w, b = p["weight"].astype(x.dtype)[0, 0], p["bias"].astype(x.dtype)
    ones = jnp.ones((*x.shape[:-1], 1), x.dtype)
    xa = _pad_hw(jnp.concatenate([x, ones], axis=-1), pad)
    return pointwise_conv(xa, jnp.concatenate([w, b[None]], axis=0))


def fused_forward_features(spec: FusedSpec, params: Params, x: jax.Array) -> jax.Array:
    """NHWC images -> unpooled features `[B, H/32, W/32, num_features]`, the whole batch at once."""
    impl = spec.conv_impl
    x = _conv(x.astype(spec.dtype), params["stem"], spec.stem, impl)
    for (convs, skip), layers in zip(spec.blocks, params["blocks"], strict=True):
        shortcut = x
        if impl == "cpu" and len(convs) == 3 and x.shape[1] * x.shape[2] >= PAD_INTO_EXPAND_MIN_POSITIONS:
            _, dw, pwl = convs
            z = _expand_padded(x, layers[0], dw.padding)
            w, b = layers[1]["weight"].astype(x.dtype), layers[1]["bias"].astype(x.dtype)
            x = jnp.clip(_depthwise_padded(jnp.clip(z, 0.0, 6.0), w[:, :, 0], dw.stride) + b, 0.0, 6.0)
            x = _conv(x, layers[2], pwl, impl)
        else:
            for conv, p in zip(convs, layers, strict=True):
                x = _conv(x, p, conv, impl)
        if skip:
            x = x + shortcut
    return _conv(x, params["head"], spec.head, impl)


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
    def compiler_options(self) -> dict[str, str] | None:
        """XLA options the jitted call compiles with (pass them to your own `jax.jit` of `apply`)."""
        return CPU_COMPILER_OPTIONS if self.spec.conv_impl == "cpu" else None

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        """Logits of NHWC `x` (already checked) for `params` shaped like `self.params`: pure, jittable."""
        return chunked(functools.partial(fused_forward, self.spec, params), x, self.batch_chunk)

    def __call__(self, x) -> jax.Array:
        return self._jitted(self.params, check_input(x, self.in_chans))


def fuse_for_inference(model: MobileNetV2, *, batch_chunk: int | None = None) -> FusedMobileNetV2:
    """`model` with each BatchNorm folded into its convolution (its running statistics: eval-mode semantics).

    batch_chunk: images per group when a batch is processed as a loop over groups; default 2 with
    `conv_impl='cpu'` (best on CPU: keeps a group's activations in cache), 0 (whole batch) otherwise.
    The model itself is not changed; fuse again after changing its weights."""
    if model.features_only:
        raise ValueError("fuse_for_inference needs a classification model: features_only models are not supported")
    impl = model.conv_stem.conv_impl
    if batch_chunk is None:
        batch_chunk = 2 if impl == "cpu" else 0
    pdtype = np.dtype(model.param_dtype)
    modules = [b for stage in model.blocks for b in stage]
    blocks = [_block_layers(b) for b in modules]
    spec = FusedSpec(
        stem=_spec(model.conv_stem, model.bn1),
        blocks=tuple(
            (tuple(_spec(c, n) for c, n in layers), b.has_skip) for layers, b in zip(blocks, modules, strict=True)
        ),
        head=_spec(model.conv_head, model.bn2),
        global_pool=model.global_pool,
        has_classifier=model.classifier is not None,
        conv_impl=impl,
        dtype=model.dtype or pdtype,
    )
    params: Params = {
        "stem": _fold(model.conv_stem, model.bn1, pdtype),
        "blocks": [[_fold(c, n, pdtype) for c, n in layers] for layers in blocks],
        "head": _fold(model.conv_head, model.bn2, pdtype),
    }
    if model.classifier is not None:
        params["classifier"] = {k: np.asarray(getattr(model.classifier, k)[...]) for k in ("weight", "bias")}
    params = jax.tree.map(jnp.asarray, params)
    return FusedMobileNetV2(spec, params, batch_chunk=batch_chunk, in_chans=model.in_chans)
