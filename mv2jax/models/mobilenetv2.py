"""The MobileNetV2 network in Flax NNX, with timm's module tree (`conv_stem`, `bn1`, `blocks[i][j]`,
`conv_head`, `bn2`, `classifier`), so its flat state paths are timm's state-dict keys: `MobileNetV2` (timm's
EfficientNet class) and `MobileNetV2Features` (timm's EfficientNetFeatures: the same stem and blocks, no head).

Inputs are NHWC float arrays `[B, H, W, in_chans]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mv2jax.models.activations import DEFAULT_ACT, check_act
from mv2jax.models.arch import ArchConfig, BlockSpec, build_block_specs, feature_taps, head_size, stem_size
from mv2jax.models.backends import Backend, get_backend
from mv2jax.models.folded import FusedBlock
from mv2jax.models.layers import (
    BatchNormAct2d,
    Conv2d,
    DropPath,
    Linear,
    check_running_stats_from,
    fold_conv_bn,
)
from mv2jax.models.pooling import check_pool_type, global_pool_2d


@dataclass(frozen=True)
class LayerOpts:
    """What every layer of one network shares."""

    backend: Backend
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
            backend=self.backend,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            rngs=rngs,
        )

    def bn(self, chs, *, linear: bool = False) -> BatchNormAct2d:
        """BatchNorm followed by the network's activation, or by none (`linear`)."""
        act = None if linear else self.act
        return BatchNormAct2d(chs, act=act, backend=self.backend, dtype=self.dtype, param_dtype=self.param_dtype)


class Block(nnx.Module):
    """What both block types share: the residual and BatchNorm folding for `fuse_for_inference`."""

    kind: ClassVar[str]  # the block type in the architecture strings and the folded network ('ds', 'ir')
    has_skip: bool
    drop_path: DropPath | None

    def conv_bn_pairs(self) -> list[tuple[Conv2d, BatchNormAct2d]]:
        raise NotImplementedError

    def fold(self, param_dtype) -> tuple[FusedBlock, list[dict[str, np.ndarray]]]:
        """Each convolution with its BatchNorm folded in (eval-mode semantics): the block's static description
        and its folded parameters, in order."""
        folded = [fold_conv_bn(conv, bn, param_dtype) for conv, bn in self.conv_bn_pairs()]
        block = FusedBlock(self.kind, tuple(spec for spec, _ in folded), self.has_skip)
        return block, [p for _, p in folded]

    def _residual(self, x: jax.Array, shortcut: jax.Array) -> jax.Array:
        if not self.has_skip:
            return x
        return (self.drop_path(x) if self.drop_path is not None else x) + shortcut


class DepthwiseSeparableConv(Block):
    """timm's DepthwiseSeparableConv: dw conv -> BN+ReLU6 -> pw conv -> BN (no act) [+ skip]."""

    kind = "ds"

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

    kind = "ir"

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


BLOCK_TYPES = {cls.kind: cls for cls in (DepthwiseSeparableConv, InvertedResidual)}


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


class MobileNetV2Base(nnx.Module):
    """What MobileNetV2 and MobileNetV2Features share: the stem and the blocks (timm's module names), the backend
    every layer holds, the train/eval modes and the BatchNorm statistic groups."""

    features_only: ClassVar[bool]
    feature_info: FeatureInfo
    pretrained_cfg: dict[str, Any]  # set by create_model, as timm sets it
    default_cfg: dict[str, Any]

    def _init_trunk(
        self, arch: ArchConfig, opts: LayerOpts, *, in_chans: int, drop_path_rate: float, rngs: nnx.Rngs
    ) -> list[list[BlockSpec]]:
        """`conv_stem`, `bn1` and `blocks`; returns the blocks' specs per stage."""
        self.backend, self.arch, self.in_chans = opts.backend, arch, in_chans
        self.dtype, self.param_dtype = opts.dtype, opts.param_dtype
        specs = build_block_specs(arch, drop_path_rate)
        self.conv_stem = opts.conv(in_chans, stem_size(arch), 3, stride=2, rngs=rngs)
        self.bn1 = opts.bn(stem_size(arch))
        self.blocks = nnx.List(
            [nnx.List([BLOCK_TYPES[s.block_type](s, opts, rngs=rngs) for s in stage]) for stage in specs]
        )
        return specs

    @property
    def conv_impl(self) -> str:
        """The name of the backend the layers run on ('xla' or 'cpu')."""
        return self.backend.name

    def set_bn_stat_groups(self, groups: int, running_stats_from: str = "mean") -> MobileNetV2Base:
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

    def train(self, **attributes) -> MobileNetV2Base:
        super().train(**attributes)
        return self

    def eval(self, **attributes) -> MobileNetV2Base:
        super().eval(**attributes)
        return self

    def _check_input(self, x) -> jax.Array:
        return check_input(x, self.in_chans)

    def _stem(self, x) -> jax.Array:
        return self.bn1(self.conv_stem(self._check_input(x)))

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


class MobileNetV2(MobileNetV2Base):
    """timm's EfficientNet class as configured for MobileNetV2: stem, blocks, head conv, pooling, classifier.
    Created in train mode like a PyTorch module: call `.eval()` for inference."""

    features_only = False

    def __init__(
        self,
        arch: ArchConfig,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        conv_impl: str | Backend = "auto",
        act: str | None = DEFAULT_ACT,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_pool_type(global_pool)
        opts = LayerOpts(get_backend(conv_impl), dtype, param_dtype, check_act(act))
        specs = self._init_trunk(arch, opts, in_chans=in_chans, drop_path_rate=drop_path_rate, rngs=rngs)
        self.drop_rate = drop_rate
        taps = feature_taps(specs, stem_size(arch))
        self.feature_info = nnx.static(FeatureInfo(taps, tuple(range(len(taps)))))
        self.num_features = head_size(arch)
        self.conv_head = opts.conv(specs[-1][-1].out_chs, self.num_features, 1, rngs=rngs)
        self.bn2 = opts.bn(self.num_features)
        self.head_drop = nnx.Dropout(drop_rate, rngs=rngs)
        self._init_classifier(num_classes, global_pool, rngs)

    def _init_classifier(self, num_classes: int, global_pool: str, rngs: nnx.Rngs) -> None:
        pool = check_pool_type(global_pool)
        if num_classes and not pool.reductions:
            raise ValueError("global_pool='' needs num_classes=0 (unpooled features have no linear classifier)")
        self.num_classes, self.global_pool = num_classes, global_pool
        feat = self.num_features * pool.channel_factor
        self.head_hidden_size = feat
        linear = None
        if num_classes:
            linear = Linear(feat, num_classes, dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)
        self.classifier = nnx.data(linear)  # None or a Linear: explicit data status, as reset_classifier swaps it

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, *, seed: int = 0) -> None:
        """New classifier (timm's init) for `num_classes` (0 removes it); keeps the pooling unless given."""
        self._init_classifier(
            num_classes, self.global_pool if global_pool is None else global_pool, nnx.Rngs(params=seed)
        )

    def forward_features(self, x) -> jax.Array:
        """NHWC images -> unpooled features `[B, H/32, W/32, num_features]`."""
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

    def __call__(self, x) -> jax.Array:
        return self.forward_head(self.forward_features(x))


class MobileNetV2Features(MobileNetV2Base):
    """timm's EfficientNetFeatures for MobileNetV2: the stem and every block, no head and no classifier.
    `model(x)` -> the NHWC feature maps at `out_indices` of timm's 5 taps (reductions 2, 4, 8, 16, 32)."""

    features_only = True

    def __init__(
        self,
        arch: ArchConfig,
        *,
        out_indices: tuple[int, ...] | None = None,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        conv_impl: str | Backend = "auto",
        act: str | None = DEFAULT_ACT,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        opts = LayerOpts(get_backend(conv_impl), dtype, param_dtype, check_act(act))
        specs = self._init_trunk(arch, opts, in_chans=in_chans, drop_path_rate=drop_path_rate, rngs=rngs)
        taps = feature_taps(specs, stem_size(arch))
        indices = tuple(range(len(taps))) if out_indices is None else tuple(out_indices)
        if any(not 0 <= i < len(taps) for i in indices):
            raise ValueError(f"out_indices {indices} out of range: this model has {len(taps)} feature levels")
        # timm's FeatureInfo numbers the taps of a features model.
        self.feature_info = nnx.static(FeatureInfo([t | {"index": i} for i, t in enumerate(taps)], indices))
        self.num_features = specs[-1][-1].out_chs

    def __call__(self, x) -> list[jax.Array]:
        return self.forward_intermediates_list(x)


def build_mobilenetv2(
    arch: ArchConfig,
    *,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    num_classes: int = 1000,
    drop_rate: float = 0.0,
    global_pool: str = "avg",
    **kwargs: Any,
) -> MobileNetV2 | MobileNetV2Features:
    """timm's class choice in `_create_effnet`: `MobileNetV2Features` when `features_only` (the head's arguments,
    `num_classes`, `drop_rate` and `global_pool`, do not apply), else `MobileNetV2` (`out_indices` does not
    apply). `kwargs` go to both: in_chans, drop_path_rate, conv_impl, act, dtype, param_dtype, rngs."""
    if features_only:
        return MobileNetV2Features(arch, out_indices=out_indices, **kwargs)
    return MobileNetV2(arch, num_classes=num_classes, drop_rate=drop_rate, global_pool=global_pool, **kwargs)
