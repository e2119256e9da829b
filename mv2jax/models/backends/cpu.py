"""The 'cpu' backend: MobileNetV2's convolutions and BatchNorm in the forms XLA:CPU runs fast, with
hand-written gradients. Everything specific to XLA:CPU lives here and nowhere else.

XLA's CPU backend runs the convolutions of MobileNetV2 several times slower than the same maths as multiply-adds
and matmuls, and autodiff of the multiply-add forms is slower still: the transpose of a strided slice is a padded
scatter per tap, and the weight gradient of a 1x1 convolution asks for a transposed copy of its output gradient,
which XLA fuses with the whole BatchNorm/depthwise backward before it and then computes in transposed
(cache-hostile) order. Each primitive here is one custom VJP whose backward is a few fused passes over the
activations. Results equal the autodiff of the 'xla' backend's formulas to float rounding
(tests/models/test_cpu_backend.py).

For the BatchNorm-folded inference network it also owns the block-level fusions (the stem as broadcast
multiply-adds, the expansion matmul on its depthwise conv's padded grid), the batch loop over pairs of images and
the compiler options. `CpuBackend` presents all of it as the `Backend` protocol.

Layouts: activations NHWC; depthwise kernel `[k, k, C]`; pointwise kernel `[C_in, C_out]`.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from mv2jax.models.activations import apply_act
from mv2jax.models.backends import xla
from mv2jax.models.backends.base import ConvParams, conv_bias_act
from mv2jax.models.folded import ConvSpec, FusedBlock


def _tap(x: jax.Array, i: int, j: int, stride: int, out_h: int, out_w: int) -> jax.Array:
    """x[:, i + s*h, j + s*w, :] for the `out_h x out_w` output positions: the input of kernel tap (i, j)."""
    limit = (x.shape[0], i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, x.shape[3])
    return jax.lax.slice(x, (0, i, j, 0), limit, (1, stride, stride, 1))


def _taps(x: jax.Array, w: jax.Array, stride: int, out_h: int, out_w: int) -> jax.Array:
    """sum_ij x[:, i + s*h, j + s*w, :] * w[i, j]: the k*k shifted multiply-adds of a (padded) NHWC input,
    accumulated in float32 or wider (bf16 inputs: one rounding of the result, as a convolution's)."""
    k, acc = w.shape[0], _accumulator(x.dtype)
    xa, wa = x.astype(acc), w.astype(acc)
    terms = (_tap(xa, i, j, stride, out_h, out_w) * wa[i, j] for i in range(k) for j in range(k))
    return functools.reduce(operator.add, terms).astype(x.dtype)


def _accumulator(dtype) -> jnp.dtype:
    return jnp.promote_types(jnp.float32, dtype)


def _pad_hw(x: jax.Array, pad: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def _depthwise_padded(xp: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    k = w.shape[0]
    return _taps(xp, w, stride, (xp.shape[1] - k) // stride + 1, (xp.shape[2] - k) // stride + 1)


def patches(x: jax.Array, k: int, stride: int, pad: int) -> jax.Array:
    """im2col: `[N, OH, OW, k*k*C]`, the k x k window of every output position (zero padding `pad`), ordered
    (row, column, channel) as a flattened HWIO kernel's inputs. A dense convolution is then one matmul."""
    xp = _pad_hw(x, pad)
    out_h, out_w = (xp.shape[1] - k) // stride + 1, (xp.shape[2] - k) // stride + 1
    return jnp.concatenate([_tap(xp, i, j, stride, out_h, out_w) for i in range(k) for j in range(k)], axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv(x: jax.Array, w: jax.Array, stride: int, pad: int) -> jax.Array:
    """Depthwise k x k convolution, symmetric zero padding `pad`. x: `[N, H, W, C]`, w: `[k, k, C]`."""
    return _depthwise_padded(_pad_hw(x, pad), w, stride)


def _depthwise_fwd(x, w, stride, pad):
    # The padded input is the residual: the pad then is the only consumer of x, so XLA writes the producer's
    # output (BatchNorm + ReLU6) straight into the padded buffer, and the backward need not pad again.
    xp = _pad_hw(x, pad)
    return _materialized(functools.partial(_depthwise_padded, stride=stride), xp, w, probe=w), (xp, w)


def _materialized(fn, *args: jax.Array, probe: jax.Array) -> jax.Array:
    """fn(*args), computed once into a buffer of its own.

    XLA:CPU counts elementwise work as cheap and fuses it into every consumer: a depthwise output's k*k taps would
    be recomputed in each of the BatchNorm passes that read it, forward and backward, and the BatchNorm
    backward's dx once per tap of the depthwise weight gradient after it. A conditional's result is a buffer XLA
    will not fuse across, so its consumers read it instead. Both branches are the same computation and the
    predicate (is the first element of `probe` not NaN) cannot be folded away by XLA, so the result is `fn`'s;
    `probe` is a small parameter, so under sharding the predicate needs no communication. A conditional is the
    one construct that survives XLA's passes here: `lax.optimization_barrier` is dropped before fusion."""
    first = probe.reshape(-1)[0]
    return jax.lax.cond(first == first, fn, fn, *args)


def _depthwise_bwd(stride, pad, res, dy):
    xp, w = res
    k = w.shape[0]
    hp, wp = xp.shape[1], xp.shape[2]
    h, wd = hp - 2 * pad, wp - 2 * pad
    oh, ow = dy.shape[1], dy.shape[2]
    # dx: correlate dy, dilated by the stride and padded to the full window range, with the flipped kernel.
    extra_h = (hp - k + 1) - ((oh - 1) * stride + 1)
    extra_w = (wp - k + 1) - ((ow - 1) * stride + 1)
    zero = jnp.zeros((), dy.dtype)
    dyp = jax.lax.pad(
        dy, zero, ((0, 0, 0), (k - 1, k - 1 + extra_h, stride - 1), (k - 1, k - 1 + extra_w, stride - 1), (0, 0, 0))
    )
    dx = _taps(dyp, w[::-1, ::-1], 1, hp, wp)[:, pad : pad + h, pad : pad + wd, :]
    return dx, _depthwise_weight_grad(xp, dy, k, stride).astype(w.dtype)


# Per-example activations at least this large (elements) get the weight gradient's sums in two stages.
ROW_SUMS_MIN_ELEMENTS = 1 << 18


def _depthwise_weight_grad(xp: jax.Array, dy: jax.Array, k: int, stride: int) -> jax.Array:
    """dw[i, j] = sum over n, h, w of the (i, j) tap's input (of the padded `xp`) times dy: `[k, k, C]`.

    One variadic reduce sums all k*k products in a single pass (one fusion, faster to run and to compile than
    k*k separate reductions). For large activations (the 112x112 and 56x56 layers) that reduce sums over rows
    only, leaving `[N, W, C]` per tap for a second, small reduce: XLA:CPU reduces over rows and columns at once
    more slowly there."""
    n, oh, ow, c = dy.shape
    acc = _accumulator(dy.dtype)  # bf16 activations: products and sums in float32
    xp, dy = xp.astype(acc), dy.astype(acc)
    axes = (1,) if xp.shape[1] * xp.shape[2] * xp.shape[3] >= ROW_SUMS_MIN_ELEMENTS else (1, 2)
    products = tuple(_tap(xp, i, j, stride, oh, ow) * dy for i in range(k) for j in range(k))
    zeros = tuple(jnp.zeros((), acc) for _ in products)
    sums = jax.lax.reduce(products, zeros, lambda a, b: tuple(u + v for u, v in zip(a, b, strict=True)), axes)
    return jnp.stack([jnp.sum(s.reshape(-1, c), axis=0) for s in sums]).reshape(k, k, c)


depthwise_conv.defvjp(_depthwise_fwd, _depthwise_bwd)


@jax.custom_vjp
def pointwise_conv(x: jax.Array, w: jax.Array) -> jax.Array:
    """1x1 convolution as a matmul over channels, accumulated in float32 or wider. x: `[N, H, W, C_in]`,
    w: `[C_in, C_out]`."""
    return jnp.einsum("nhwc,cd->nhwd", x, w, preferred_element_type=_accumulator(x.dtype)).astype(x.dtype)


def _pointwise_fwd(x, w):
    return pointwise_conv(x, w), (x, w)


def _pointwise_bwd(res, dy):
    x, w = res
    acc = _accumulator(dy.dtype)
    dx = jnp.einsum("nhwd,cd->nhwc", dy, w, preferred_element_type=acc).astype(x.dtype)
    dw = jax.lax.dot_general(
        x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1]), (((0,), (0,)), ((), ())), preferred_element_type=acc
    )
    return dx, dw.astype(w.dtype)


pointwise_conv.defvjp(_pointwise_fwd, _pointwise_bwd)


# The jitted helpers below trace once per distinct shape rather than once per layer (many layers share
# shapes): the Python of tracing each jnp op, once per layer, adds up to seconds in a train step's trace.
@functools.partial(jax.jit, static_argnums=(3, 4))
def _bn_forward(xg, weight, bias, eps, act):
    mean = jnp.mean(xg, axis=(1, 2, 3), keepdims=True)
    var = jnp.mean(jnp.square(xg - mean), axis=(1, 2, 3), keepdims=True)
    rstd = jax.lax.rsqrt(var + eps)
    return _bn_apply(xg, weight, bias, mean, rstd, act), mean, var, rstd


def _bn_apply(xg, weight, bias, mean, rstd, act):
    # x * scale + shift, not (x - mean) * scale + bias: x - mean then feeds only reductions (the variance, and
    # sum(dy * (x - mean)) in the backward), not this pass too.
    scale = rstd * weight
    return apply_act(xg * scale + (bias - mean * scale), act)


def batch_norm_train(
    xg: jax.Array, weight: jax.Array, bias: jax.Array, shift: jax.Array, eps: float, act: str | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Train-mode BatchNorm (+ activation) with statistics per group.

    xg: `[G, n, H, W, C]` (G groups of n examples); weight, bias: `[C]`. Returns (y like xg, mean `[G, C]`,
    biased variance `[G, C]`). The statistics are outputs for the running averages only: no gradient flows
    back through them. The variance is two-pass, E[(x - mean)^2], so `shift` is not needed.
    """
    return _batch_norm_train(xg, weight, bias, eps, act)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_norm_train(xg, weight, bias, eps, act):
    y, mean, var, _ = _bn_forward(xg, weight, bias, eps, act)
    return y, mean[:, 0, 0, 0], var[:, 0, 0, 0]


def _bn_fwd(xg, weight, bias, eps, act):
    y, mean, var, rstd = _bn_forward(xg, weight, bias, eps, act)
    return (y, mean[:, 0, 0, 0], var[:, 0, 0, 0]), (xg, weight, bias, mean, rstd)


def _bn_bwd(eps, act, res, cotangents):
    return _bn_backward(*res, cotangents[0], act)


@functools.partial(jax.jit, static_argnums=(6,))
def _bn_backward(xg, weight, bias, mean, rstd, dy, act):
    if act is not None:  # recomputing the mask reads xg, which the statistics below read anyway
        z = _bn_apply(xg, weight, bias, mean, rstd, None)  # as the forward computed it
        dy = jnp.where(_slope_one(z, act), dy, 0.0)
    n = xg.shape[1] * xg.shape[2] * xg.shape[3]
    sum_dy = jnp.sum(dy, axis=(1, 2, 3), keepdims=True)
    sum_dy_xhat = jnp.sum(dy * (xg - mean), axis=(1, 2, 3), keepdims=True) * rstd
    # dx = rstd * w * (dy - mean(dy) - xhat * mean(dy * xhat)), as a * dy + b * x + c per channel: with xhat
    # both here and in the sum above, XLA wrote it out as a full activation for the two passes.
    a = rstd * weight
    b = -a * rstd * sum_dy_xhat / n
    c = -a * sum_dy / n - b * mean
    dx = _materialized(lambda dy, xg: a * dy + b * xg + c, dy, xg, probe=weight)
    return dx, jnp.sum(sum_dy_xhat, axis=(0, 1, 2, 3)), jnp.sum(sum_dy, axis=(0, 1, 2, 3))


_batch_norm_train.defvjp(_bn_fwd, _bn_bwd)


def _slope_one(z: jax.Array, act: str) -> jax.Array:
    """Where `act` has slope 1 at its input `z` (0 elsewhere, boundaries included, as PyTorch's backward): the
    derivative of the piecewise-linear activations as a mask."""
    if act == "relu6":
        return (z > 0.0) & (z < 6.0)
    if act == "relu":
        return z > 0.0
    raise ValueError(f"no derivative mask for activation {act!r}")


def conv2d(x: jax.Array, w: jax.Array, stride: int, padding: int, groups: int) -> jax.Array:
    """NHWC `x` convolved with HWIO `w` (symmetric zero `padding`): a 1x1 convolution as a matmul, a depthwise
    one as k*k shifted multiply-adds, a dense k x k one (the stem) as a matmul of im2col patches; other grouped
    convolutions as the 'xla' backend's."""
    if w.shape[0] == w.shape[1] == 1 and groups == 1:
        return pointwise_conv(x[:, ::stride, ::stride, :] if stride > 1 else x, w[0, 0])
    if 1 < groups == x.shape[-1] == w.shape[-1]:
        return depthwise_conv(x, w[:, :, 0], stride, padding)
    if groups == 1:  # XLA:CPU's dense convolution is much slower than im2col and a matmul here
        return pointwise_conv(patches(x, w.shape[0], stride, padding), w.reshape(-1, w.shape[-1]))
    return xla.conv2d(x, w, stride, padding, groups)


# The fused inference network on one device loops over pairs of images, so each pair's activations (the
# 6x-expanded ones included) stay in cache from one layer to the next. XLA's own dot emitter, not its YNNPACK dot
# fusions (slower on these small matmuls), and 512-bit vectors where the CPU has them (LLVM prefers 256 bits on
# AVX-512 CPUs otherwise; ignored without AVX-512).
INFERENCE_BATCH_CHUNK = 2
INFERENCE_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "", "xla_cpu_prefer_vector_width": 512}
# Inverted residuals whose input has at least this many positions (the 112x112 and 56x56 stages) take the padding
# of their depthwise conv into the expansion matmul (`_expand_padded`); on smaller grids the extra border rows of
# the matmul cost more than the pass they save.
PAD_INTO_EXPAND_MIN_POSITIONS = 56 * 56


def folded_conv(x: jax.Array, p: ConvParams, spec: ConvSpec) -> jax.Array:
    """One BatchNorm-folded convolution and its activation. A dense convolution with few inputs per output
    (the stem: k*k*C_in <= 64) is k*k*C_in broadcast multiply-adds in one fusion, faster there than XLA's dense
    convolution or an im2col matmul."""
    k = spec.kernel_size
    if spec.depthwise or k == 1 or x.shape[-1] * k * k > 64:
        return conv_bias_act(conv2d, x, p, spec)
    w, b = p["weight"].astype(x.dtype), p["bias"].astype(x.dtype)
    xp, s = _pad_hw(x, spec.padding), spec.stride
    oh, ow = (xp.shape[1] - k) // s + 1, (xp.shape[2] - k) // s + 1
    terms = [
        _tap(xp, i, j, s, oh, ow)[..., c : c + 1] * w[i, j, c]
        for i in range(k)
        for j in range(k)
        for c in range(x.shape[-1])
    ]
    while len(terms) > 1:  # pairwise sum: float32 error grows with log2(27), not 27, as in a dot
        terms = [u + v for u, v in zip(terms[::2], terms[1::2], strict=False)] + terms[len(terms) // 2 * 2 :]
    return apply_act(terms[0] + b, spec.act)


def folded_block(x: jax.Array, params: Sequence[ConvParams], block: FusedBlock) -> jax.Array:
    """A block's folded convolutions (its residual is added by the caller). On the large grids an inverted
    residual's expansion is computed on its depthwise conv's padded grid (`_expand_padded`)."""
    if block.kind == "ir" and x.shape[1] * x.shape[2] >= PAD_INTO_EXPAND_MIN_POSITIONS:
        pw, dw, pwl = block.convs
        z = _expand_padded(x, params[0], dw.padding)
        w, b = params[1]["weight"].astype(x.dtype), params[1]["bias"].astype(x.dtype)
        x = apply_act(_depthwise_padded(apply_act(z, pw.act), w[:, :, 0], dw.stride) + b, dw.act)
        return folded_conv(x, params[2], pwl)
    for spec, p in zip(block.convs, params, strict=True):
        x = folded_conv(x, p, spec)
    return x


def _expand_padded(x: jax.Array, p: ConvParams, pad: int) -> jax.Array:
    """The expansion 1x1 conv's pre-activation on the zero-padded grid its depthwise conv reads. `x` gets a
    channel of ones (zeros in the padding) that multiplies the bias, so the border comes out exactly 0 (and
    the activation keeps 0 at 0) and the depthwise taps read the activation of the matmul directly: the separate
    bias + activation + pad pass over the 6x-expanded activation goes away."""
    w, b = p["weight"].astype(x.dtype)[0, 0], p["bias"].astype(x.dtype)
    ones = jnp.ones((*x.shape[:-1], 1), x.dtype)
    xa = _pad_hw(jnp.concatenate([x, ones], axis=-1), pad)
    return pointwise_conv(xa, jnp.concatenate([w, b[None]], axis=0))


def chunked(fn: Callable[[jax.Array], jax.Array], x: jax.Array, chunk: int) -> jax.Array:
    """`fn(x)` computed over groups of `chunk` examples in a loop (the batch padded to a multiple of `chunk`)."""
    n = x.shape[0]
    if chunk <= 0 or n <= chunk:
        return fn(x)
    pad = -n % chunk
    if pad:
        x = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
    out = jax.lax.map(fn, x.reshape(-1, chunk, *x.shape[1:]))
    return out.reshape(-1, *out.shape[2:])[:n]


def _batch_chunk(devices: int) -> int:
    # A loop over groups of images would cut across a batch sharded over several devices: whole batch there.
    return INFERENCE_BATCH_CHUNK if devices == 1 else 0


def run_batch(forward: Callable[[jax.Array], jax.Array], x: jax.Array, devices: int) -> jax.Array:
    """`forward(x)`: on one device over pairs of images in a loop, sharded over several devices at once."""
    return chunked(forward, x, _batch_chunk(devices))


def loops_over_batch(batch: int, devices: int) -> bool:
    return 0 < _batch_chunk(devices) < batch


@dataclasses.dataclass(frozen=True)
class CpuBackend:
    """The 'cpu' backend as an object of the `Backend` protocol."""

    name = "cpu"
    inference_compiler_options = INFERENCE_COMPILER_OPTIONS
    conv2d = staticmethod(conv2d)
    batch_norm_train = staticmethod(batch_norm_train)
    folded_conv = staticmethod(folded_conv)
    folded_block = staticmethod(folded_block)
    run_batch = staticmethod(run_batch)
    loops_over_batch = staticmethod(loops_over_batch)
