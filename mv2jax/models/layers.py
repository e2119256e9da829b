"""Building blocks with timm's parameter names: Conv2d, BatchNormAct2d, Linear, DropPath.

Layouts: activations are NHWC; conv kernels are HWIO (`[kh, kw, in/groups, out]`); linear weights are
`[in, out]`. Attribute names (`weight`, `bias`, `running_mean`, `running_var`, `num_batches_tracked`) are
timm's, so a flat NNX state path joined with dots is the timm state-dict key.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mv2jax.models.activations import DEFAULT_ACT, apply_act, check_act
from mv2jax.models.backends import Backend, ConvImpl, get_backend
from mv2jax.models.folded import ConvSpec

RUNNING_STATS_FROM = ("mean", "first")  # BatchNormAct2d.running_stats_from: all stat groups' mean, or group 0's


def symmetric_padding(kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
    """PyTorch-style symmetric padding timm uses for its default `pad_type=''` (not TF 'SAME')."""
    return ((stride - 1) + dilation * (kernel_size - 1)) // 2


def _host_rng(rngs: nnx.Rngs) -> np.random.Generator:
    """A numpy generator seeded from the next 'params' key. Initialising on the host with numpy avoids one
    XLA compilation per parameter shape, which made eager model creation take seconds."""
    return np.random.default_rng(np.asarray(jax.random.key_data(rngs.params())).tolist())


def _param(value: np.ndarray, dtype) -> nnx.Param:
    return nnx.Param(jnp.asarray(value.astype(jnp.dtype(dtype))))


class Conv2d(nnx.Module):
    """Bias-free 2-D convolution (timm `create_conv2d` with pad_type=''), computed by `backend` (a `Backend` or a
    conv_impl name, resolved once here).

    Parameters: `weight` HWIO `[k, k, in/groups, out]`, initialised as timm's `_init_weight_goog`
    (normal, std sqrt(2 / fan_out), fan_out = k*k*out/groups).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        *,
        stride: int = 1,
        groups: int = 1,
        backend: Backend | ConvImpl = "auto",
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if in_chs % groups or out_chs % groups:
            raise ValueError(f"channels {in_chs}->{out_chs} are not divisible by groups={groups}")
        self.in_chs, self.out_chs, self.kernel_size = in_chs, out_chs, kernel_size
        self.stride, self.groups, self.padding = stride, groups, symmetric_padding(kernel_size, stride)
        self.backend = get_backend(backend)
        self.dtype = dtype
        fan_out = kernel_size * kernel_size * out_chs // groups
        shape = (kernel_size, kernel_size, in_chs // groups, out_chs)
        std = math.sqrt(2.0 / fan_out)
        self.weight = _param(_host_rng(rngs).normal(0.0, std, shape), param_dtype)

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_chs == self.out_chs

    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.weight[...]
        dtype = self.dtype or jnp.result_type(x, w)
        return self.backend.conv2d(x.astype(dtype), w.astype(dtype), self.stride, self.padding, self.groups)


def fold_conv_bn(conv: Conv2d, bn: BatchNormAct2d, param_dtype) -> tuple[ConvSpec, dict[str, np.ndarray]]:
    """`bn` (eval mode: its running statistics) folded into `conv`: (spec, {'weight': HWIO kernel scaled per
    output channel, 'bias': [C_out]}), computed in float64 on the host, then cast to `param_dtype`."""
    f64 = functools.partial(np.asarray, dtype=np.float64)
    scale = f64(bn.weight[...]) / np.sqrt(f64(bn.running_var[...]) + bn.eps)
    weight = f64(conv.weight[...]) * scale
    bias = f64(bn.bias[...]) - f64(bn.running_mean[...]) * scale
    spec = ConvSpec(conv.kernel_size, conv.stride, conv.padding, conv.is_depthwise, bn.act)
    return spec, {"weight": weight.astype(param_dtype), "bias": bias.astype(param_dtype)}


class BatchNormAct2d(nnx.Module):
    """timm's BatchNormAct2d (BatchNorm2d + optional activation `act`, a name from
    `mv2jax.models.activations`) over NHWC. Train mode runs `backend`'s BatchNorm (a `Backend` or a conv_impl
    name, resolved once here).

    Train mode normalises with the biased batch variance and updates the running statistics PyTorch's
    way: `running = (1 - momentum) * running + momentum * stat`, with the *unbiased* variance,
    momentum 0.1 (Flax's 0.9). Statistics, normalisation and activation are computed in float32 or wider,
    whatever the compute dtype, and the output stays float32, as under PyTorch's autocast: the next
    convolution rounds its input to the compute dtype, and residual sums are taken in float32.

    `stat_groups` splits the batch into that many equal groups with their own statistics (timm's per-GPU
    BatchNorm without `--sync-bn`: a group per device). `running_stats_from` says which groups feed the running
    statistics: 'mean' over the groups (what timm's `--dist-bn reduce` gives at epoch end, the update being
    linear) or 'first', group 0 only (rank 0's statistics: timm's `--dist-bn broadcast`). While a
    `BatchStatsBuffer` holds the layer (`stats_buffer`), the statistics go to it and it moves the running ones.
    """

    def __init__(
        self,
        num_features: int,
        *,
        act: str | None = DEFAULT_ACT,
        eps: float = 1e-5,
        momentum: float = 0.1,
        backend: Backend | ConvImpl = "auto",
        dtype=None,
        param_dtype=jnp.float32,
    ):
        self.num_features, self.act = num_features, check_act(act)
        self.backend = get_backend(backend)
        self.eps, self.momentum, self.dtype = eps, momentum, dtype
        self.use_running_average = False
        self.stat_groups = 1
        self.running_stats_from = "mean"
        self.stats_buffer: BatchStatsBuffer | None = None
        self.weight = _param(np.ones(num_features), param_dtype)
        self.bias = _param(np.zeros(num_features), param_dtype)
        stat_dtype = jnp.promote_types(jnp.float32, param_dtype)
        self.running_mean = nnx.BatchStat(jnp.asarray(np.zeros(num_features, stat_dtype)))
        self.running_var = nnx.BatchStat(jnp.asarray(np.ones(num_features, stat_dtype)))
        self.num_batches_tracked = nnx.BatchStat(jnp.asarray(np.zeros((), np.int32)))

    def _update_running_stats(self, mean: jax.Array, var: jax.Array, n: int) -> None:
        """PyTorch's running-average update from the per-group batch mean and biased variance `[G, C]` of `n`
        values each."""
        check_running_stats_from(self.running_stats_from)
        self._fold_running_stats(*_fed_stats(mean, _unbiased(var, n), self.running_stats_from))

    def _fold_running_stats(self, mean: jax.Array, var: jax.Array) -> None:
        """The running statistics moved towards this step's `[C]` batch mean and unbiased variance."""
        stats = (self.running_mean, self.running_var, self.num_batches_tracked)
        new = _running_average(*(v[...] for v in stats), mean, var, self.momentum)
        # set_value, not `var[...] = `: under a trace the latter compares shardings, and asking a tracer for its
        # sharding builds an error message that walks the whole jaxpr so far (~1 s of a train step's trace)
        for variable, value in zip(stats, new, strict=True):
            variable.set_value(value)

    def __call__(self, x: jax.Array) -> jax.Array:
        w, b = _stat_cast(self.weight[...]), _stat_cast(self.bias[...])
        if self.use_running_average:
            scale = w * jax.lax.rsqrt(self.running_var[...] + self.eps)
            shift = b - self.running_mean[...] * scale
            return apply_act(_stat_cast(x) * scale + shift, self.act)
        groups = self.stat_groups
        if x.shape[0] % groups:
            raise ValueError(f"batch of {x.shape[0]} does not split into {groups} BatchNorm stat groups")
        xg = _stat_cast(x).reshape(groups, x.shape[0] // groups, *x.shape[1:])
        shift = _stat_cast(self.running_mean[...])
        y, mean, var = self.backend.batch_norm_train(xg, w, b, shift, self.eps, self.act)
        n = xg.shape[1] * xg.shape[2] * xg.shape[3]
        if self.stats_buffer is None:
            self._update_running_stats(mean, var, n)
        else:
            self.stats_buffer.write(self, mean, _unbiased(var, n))
        return y.reshape(x.shape)


def _unbiased(var: jax.Array, n: int) -> jax.Array:
    """The biased variance of `n` values made unbiased, as PyTorch's running variance takes it."""
    return var * (n / max(n - 1, 1))


def _fed_stats(mean: jax.Array, var: jax.Array, running_stats_from: str) -> tuple[jax.Array, jax.Array]:
    """The per-group statistics `[G, ...]` that feed the running averages: their mean over the groups, or group
    0's."""
    if running_stats_from == "first":
        return mean[0], var[0]
    return jnp.mean(mean, axis=0), jnp.mean(var, axis=0)


@functools.partial(jax.jit, static_argnums=(5,))
def _running_average(running_mean, running_var, num_batches_tracked, mean, var, momentum: float):
    """(running_mean, running_var, num_batches_tracked) after one update towards the batch `mean` and unbiased
    `var`; jitted to trace once per shape."""
    m = momentum
    return (
        ((1 - m) * running_mean + m * mean).astype(running_mean.dtype),
        ((1 - m) * running_var + m * var).astype(running_var.dtype),
        num_batches_tracked + 1,
    )


class BatchStatsBuffer:
    """Where the train-mode BatchNorms of `model` put their per-group batch statistics during one forward: a
    single `[G, 2, N]` array (mean and unbiased variance, N = all the layers' channels), written in place layer
    after layer. `fold` then moves every layer's running statistics, as each layer would have on its own.

    Kept by each layer, ~100 small statistics live from the forward to the step's end, and XLA:TPU scatters
    them among the activations, which grows its heap (BENCHMARKS.md); one array takes one place.

    Use: `buffer = BatchStatsBuffer(model)`, run the forward, `buffer.fold()` (which detaches the buffer), all
    three within one trace (the train step's) or eagerly."""

    def __init__(self, model: nnx.Module):
        self.layers = [m for _, m in nnx.iter_modules(model) if isinstance(m, BatchNormAct2d)]
        self.size = sum(layer.num_features for layer in self.layers)
        self.array: jax.Array | None = None
        self.written: list[tuple[BatchNormAct2d, int]] = []  # (layer, its channels' offset in the array)
        self.end = 0
        for layer in self.layers:
            layer.stats_buffer = self

    def write(self, layer: BatchNormAct2d, mean: jax.Array, var: jax.Array) -> None:
        """`layer`'s per-group batch mean and unbiased variance, `[G, C]` each, into the next C channels."""
        stats = jnp.stack([mean, var], axis=1)
        channels = stats.shape[-1]
        if self.end + channels > self.size:
            raise ValueError(f"BatchNorm statistics of {self.end + channels} channels overflow a buffer of {self.size}")
        if self.array is None:  # padded from the first statistics, so the array takes their sharding
            self.array = jnp.pad(stats, ((0, 0), (0, 0), (0, self.size - channels)))
        else:
            self.array = jax.lax.dynamic_update_slice(self.array, stats.astype(self.array.dtype), (0, 0, self.end))
        self.written.append((layer, self.end))
        self.end += channels

    def fold(self) -> None:
        """Every written layer's running statistics updated from the array; the layers let go of the buffer."""
        fed: dict[str, tuple[jax.Array, jax.Array]] = {}
        for layer, start in self.written:
            check_running_stats_from(layer.running_stats_from)
            if layer.running_stats_from not in fed and self.array is not None:
                fed[layer.running_stats_from] = _fed_stats(self.array[:, 0], self.array[:, 1], layer.running_stats_from)
            mean, var = (s[start : start + layer.num_features] for s in fed[layer.running_stats_from])
            layer._fold_running_stats(mean, var)
        for layer in self.layers:
            layer.stats_buffer = None
        self.array, self.written, self.end = None, [], 0


def check_running_stats_from(value: str) -> None:
    if value not in RUNNING_STATS_FROM:
        raise ValueError(f"running_stats_from must be one of {RUNNING_STATS_FROM}, got {value!r}")


def _stat_cast(x: jax.Array) -> jax.Array:
    """BatchNorm statistics and affine maths in float32, or float64 when the input is."""
    return x.astype(jnp.promote_types(jnp.float32, x.dtype))


class Linear(nnx.Module):
    """Fully connected layer; `weight` is `[in, out]` (timm's `[out, in]` transposed), initialised as timm's
    `_init_weight_goog` (uniform +-1/sqrt(out)), zero bias."""

    def __init__(self, in_features: int, out_features: int, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.in_features, self.out_features, self.dtype = in_features, out_features, dtype
        bound = 1.0 / math.sqrt(out_features)
        shape = (in_features, out_features)
        self.weight = _param(_host_rng(rngs).uniform(-bound, bound, shape), param_dtype)
        self.bias = _param(np.zeros(out_features), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        w, b = self.weight[...], self.bias[...]
        if self.dtype is not None:
            x, w, b = x.astype(self.dtype), w.astype(self.dtype), b.astype(self.dtype)
        return x @ w + b


class DropPath(nnx.Module):
    """Stochastic depth per sample (timm's DropPath, scale_by_keep): active only when not `deterministic`."""

    def __init__(self, rate: float, *, rngs: nnx.Rngs):
        self.rate = rate
        self.deterministic = False
        self.rngs = rngs["dropout"].fork()

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.rngs(), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return x * (mask.astype(x.dtype) / jnp.asarray(keep, x.dtype))
