"""The MobileNetV2 network in Flax NNX, with timm's module tree (`conv_stem`, `bn1`, `blocks[i][j]`,
`conv_head`, `bn2`, `classifier`), so its flat state paths are timm's state-dict keys.

Inputs are NHWC float arrays `[B, H, W, in_chans]`.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mv2jax.models.activations import DEFAULT_ACT, check_act
from mv2jax.models.arch import ArchConfig, BlockSpec, build_block_specs, feature_taps, head_size, stem_size
from mv2jax.models.backends import resolve_conv_impl
from mv2jax.models.layers import (
    BatchNormAct2d,
    Conv2d,
    ConvSpec,
    DropPath,
    Linear,
    check_running_stats_from,
    fold_conv_bn,
)

POOL_TYPES = ("avg", "max", "avgmax", "catavgmax", "")


@dataclass(frozen=True)
class LayerOpts:
    """What every layer of one network shares."""

    conv_impl: str = "auto"
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    act: str | None = DEFAULT_ACT

    def conv(self, in_chs, out_chs, k, *, rngs, stride=1, groups=1) -> Conv2d:
        return Conv2d(
            in_chs,
            out_chs,
            k,
            stride=stride,
            groups=groups,
            conv_impl=self.conv_impl,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            rngs=rngs,
        )

    def bn(self, chs, *, linear: bool = False) -> BatchNormAct2d:
        """BatchNorm followed by the network's activation, or by none (`linear`)."""
        act = None if linear else self.act
        return BatchNormAct2d(chs, act=act, conv_impl=self.conv_impl, dtype=self.dtype, param_dtype=self.param_dtype)


class Block(nnx.Module):
    """What both block types share: the residual and BatchNorm folding for `fuse_for_inference`."""

    has_skip: bool
    drop_path: DropPath | None

    def conv_bn_pairs(self) -> list[tuple[Conv2d, BatchNormAct2d]]:
        raise NotImplementedError

    def fold(self, param_dtype) -> tuple[tuple[ConvSpec, ...], list[dict[str, np.ndarray]]]:
        """Each convolution with its BatchNorm folded in (eval-mode semantics): (specs, params) in order."""
        folded = [fold_conv_bn(conv, bn, param_dtype) for conv, bn in self.conv_bn_pairs()]
        return tuple(spec for spec, _ in folded), [p for _, p in folded]

    def _residual(self, x: jax.Array, shortcut: jax.Array) -> jax.Array:
        if not self.has_skip:
            return x
        return (self.drop_path(x) if self.drop_path is not None else x) + shortcut


class DepthwiseSeparableConv(Block):
    """timm's DepthwiseSeparableConv: dw conv -> BN+ReLU6 -> pw conv -> BN (no act) [+ skip]."""

    def __init__(self, spec: BlockSpec, opts: LayerOpts, *, rngs: nnx.Rngs):
        chs = spec.in_chs
        self.has_skip = spec.has_skip
        self.conv_dw = opts.conv(chs, chs, spec.kernel_size, stride=spec.stride, groups=chs, rngs=rngs)
        self.bn1 = opts.bn(chs)
        self.conv_pw = opts.conv(chs, spec.out_chs, 1, rngs=rngs)
        self.bn2 = opts.bn(spec.out_chs, linear=True)
        self.drop_path = DropPath(spec.drop_path_rate, rngs=rngs) if self.has_skip and spec.drop_path_rate else None

    def conv_bn_pairs(self) -> list[tuple[Conv2d, BatchNormAct2d]]:
        return [(self.conv_dw, self.bn1), (self.conv_pw, self.bn2)]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self._residual(self.bn2(self.conv_pw(self.bn1(self.conv_dw(x)))), x)


class InvertedResidual(Block):
    """timm's InvertedResidual: pw expand -> BN+ReLU6 -> dw conv -> BN+ReLU6 -> pw linear -> BN [+ skip]."""

    def __init__(self, spec: BlockSpec, opts: LayerOpts, *, rngs: nnx.Rngs):
        mid = spec.mid_chs
        self.has_skip = spec.has_skip
        self.conv_pw = opts.conv(spec.in_chs, mid, 1, rngs=rngs)
        self.bn1 = opts.bn(mid)
        self.conv_dw = opts.conv(mid, mid, spec.kernel_size, stride=spec.stride, groups=mid, rngs=rngs)
        self.bn2 = opts.bn(mid)
        self.conv_pwl = opts.conv(mid, spec.out_chs, 1, rngs=rngs)
        self.bn3 = opts.bn(spec.out_chs, linear=True)
        self.drop_path = DropPath(spec.drop_path_rate, rngs=rngs) if self.has_skip and spec.drop_path_rate else None

    def conv_bn_pairs(self) -> list[tuple[Conv2d, BatchNormAct2d]]:
        return [(self.conv_pw, self.bn1), (self.conv_dw, self.bn2), (self.conv_pwl, self.bn3)]

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x
        x = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))
        return self._residual(self.bn3(self.conv_pwl(x)), shortcut)


BLOCK_TYPES = {"ds": DepthwiseSeparableConv, "ir": InvertedResidual}


class FeatureInfo(list):
    """timm-style feature info: a list of dicts (`num_chs`, `reduction`, `module`, `stage`) with helpers."""

    def __init__(self, taps: list[dict], out_indices: tuple[int, ...]):
        super().__init__(taps)
        self.out_indices = tuple(out_indices)

    def channels(self) -> list[int]:
        return [self[i]["num_chs"] for i in self.out_indices]

    def reduction(self) -> list[int]:
        return [self[i]["reduction"] for i in self.out_indices]

    def module_name(self) -> list[str]:
        return [self[i]["module"] for i in self.out_indices]

    def get_dicts(self) -> list[dict]:
        return [self[i] for i in self.out_indices]


def global_pool_2d(x: jax.Array, pool_type: str) -> jax.Array:
    """timm's SelectAdaptivePool2d with flatten, over NHWC -> `[B, C]` (`[B, 2C]` for 'catavgmax')."""
    if pool_type == "":
        return x
    avg = jnp.mean(x, axis=(1, 2)) if "avg" in pool_type else None
    mx = jnp.max(x, axis=(1, 2)) if "max" in pool_type else None
    if pool_type == "avg":
        return avg
    if pool_type == "max":
        return mx
    if pool_type == "avgmax":
        return 0.5 * (avg + mx)
    return jnp.concatenate([avg, mx], axis=-1)


def check_input(x, in_chans: int) -> jax.Array:
    """`x` as a jax array if it is an NHWC float batch with `in_chans` channels; else a one-line ValueError."""
    if x.ndim != 4:
        raise ValueError(f"expected an NHWC batch [B, H, W, {in_chans}], got shape {tuple(x.shape)}")
    if x.shape[-1] != in_chans:
        hint = " (it looks NCHW: transpose with x.transpose(0, 2, 3, 1))" if x.shape[1] == in_chans else ""
        raise ValueError(f"expected NHWC input with {in_chans} channels last, got shape {tuple(x.shape)}{hint}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"expected a float image batch, got dtype {x.dtype}: normalise it first")
    return jnp.asarray(x)


class MobileNetV2(nnx.Module):
    """timm's EfficientNet class as configured for MobileNetV2 (or EfficientNetFeatures when
    `features_only`). Created in train mode like a PyTorch module: call `.eval()` for inference."""

    def __init__(
        self,
        arch: ArchConfig,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        features_only: bool = False,
        out_indices: tuple[int, ...] | None = None,
        conv_impl: str = "auto",
        act: str | None = DEFAULT_ACT,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if global_pool not in POOL_TYPES:
            raise ValueError(f"unknown global_pool {global_pool!r}: use one of {POOL_TYPES}")
        opts = LayerOpts(resolve_conv_impl(conv_impl), dtype, param_dtype, check_act(act))
        self.conv_impl = opts.conv_impl
        self.arch, self.in_chans, self.features_only = arch, in_chans, features_only
        self.drop_rate, self.dtype, self.param_dtype = drop_rate, dtype, param_dtype
        stem = stem_size(arch)
        specs = build_block_specs(arch, drop_path_rate)
        self.conv_stem = opts.conv(in_chans, stem, 3, stride=2, rngs=rngs)
        self.bn1 = opts.bn(stem)
        self.blocks = nnx.List(
            [nnx.List([BLOCK_TYPES[s.block_type](s, opts, rngs=rngs) for s in stage]) for stage in specs]
        )
        taps = feature_taps(specs, stem)
        if features_only:
            indices = tuple(range(len(taps))) if out_indices is None else tuple(out_indices)
            if any(not 0 <= i < len(taps) for i in indices):
                raise ValueError(f"out_indices {indices} out of range: this model has {len(taps)} feature levels")
            # timm's FeatureInfo numbers the taps of a features model.
            self.feature_info = nnx.static(FeatureInfo([t | {"index": i} for i, t in enumerate(taps)], indices))
            self.num_features = specs[-1][-1].out_chs
            return
        self.feature_info = nnx.static(FeatureInfo(taps, tuple(range(len(taps)))))
        self.num_features = head_size(arch)
        self.conv_head = opts.conv(specs[-1][-1].out_chs, self.num_features, 1, rngs=rngs)
        self.bn2 = opts.bn(self.num_features)
        self.head_drop = nnx.Dropout(drop_rate, rngs=rngs)
        self._init_classifier(num_classes, global_pool, rngs)

    def _init_classifier(self, num_classes: int, global_pool: str, rngs: nnx.Rngs) -> None:
        if global_pool not in POOL_TYPES:
            raise ValueError(f"unknown global_pool {global_pool!r}: use one of {POOL_TYPES}")
        if num_classes and not global_pool:
            raise ValueError("global_pool='' needs num_classes=0 (unpooled features have no linear classifier)")
        self.num_classes, self.global_pool = num_classes, global_pool
        feat = self.num_features * (2 if global_pool == "catavgmax" else 1)
        self.head_hidden_size = feat
        linear = None
        if num_classes:
            linear = Linear(feat, num_classes, dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)
        self.classifier = nnx.data(linear)  # None or a Linear: explicit data status, as reset_classifier swaps it

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, *, seed: int = 0) -> None:
        """New classifier (timm's init) for `num_classes` (0 removes it); keeps the pooling unless given."""
        if self.features_only:
            raise ValueError("a features_only model has no classifier to reset")
        self._init_classifier(
            num_classes, self.global_pool if global_pool is None else global_pool, nnx.Rngs(params=seed)
        )

    def set_bn_stat_groups(self, groups: int, running_stats_from: str = "mean") -> MobileNetV2:
        """Train-mode BatchNorm statistics per group of `batch/groups` examples (1 = whole batch). With the
        batch sharded over N devices, `groups=N` gives timm's per-GPU BatchNorm; 1 gives `--sync-bn`.
        `running_stats_from`: the running statistics follow the 'mean' over the groups (timm's `--dist-bn
        reduce`) or the 'first' group only (rank 0's: `--dist-bn broadcast`)."""
        check_running_stats_from(running_stats_from)
        for _, module in nnx.iter_modules(self):
            if isinstance(module, BatchNormAct2d):
                module.stat_groups = groups
                module.running_stats_from = running_stats_from
        return self

    def train(self, **attributes) -> MobileNetV2:
        super().train(**attributes)
        return self

    def eval(self, **attributes) -> MobileNetV2:
        super().eval(**attributes)
        return self

    def _check_input(self, x) -> jax.Array:
        return check_input(x, self.in_chans)

    def _stem(self, x) -> jax.Array:
        return self.bn1(self.conv_stem(self._check_input(x)))

    def forward_features(self, x) -> jax.Array:
        """NHWC images -> unpooled features `[B, H/32, W/32, num_features]`."""
        if self.features_only:
            raise ValueError("a features_only model returns its feature maps from model(x)")
        x = self._stem(x)
        for stage in self.blocks:
            for block in stage:
                x = block(x)
        return self.bn2(self.conv_head(x))

    def forward_head(self, x: jax.Array, pre_logits: bool = False) -> jax.Array:
        """Pool -> dropout -> classifier; `pre_logits=True` stops before the classifier."""
        x = global_pool_2d(x, self.global_pool)
        x = self.head_drop(x)
        if pre_logits or self.classifier is None:
            return x
        return self.classifier(x)

    def forward_intermediates_list(self, x) -> list[jax.Array]:
        """Feature maps at `feature_info.out_indices` (NHWC), as timm's EfficientNetFeatures returns them."""
        wanted = {self.feature_info[i]["stage"] for i in self.feature_info.out_indices}
        x = self._stem(x)
        feats = [x] if 0 in wanted else []
        for idx, stage in enumerate(self.blocks):
            for block in stage:
                x = block(x)
            if idx + 1 in wanted:
                feats.append(x)
        return feats

    def __call__(self, x) -> jax.Array | list[jax.Array]:
        if self.features_only:
            return self.forward_intermediates_list(x)
        return self.forward_head(self.forward_features(x))
