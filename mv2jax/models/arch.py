"""MobileNetV2 architecture as data: timm's block strings, width/depth multipliers and channel rounding.

`build_block_specs` turns an `ArchConfig` into one `BlockSpec` per block, with the channel counts, strides
and drop-path rates timm's `EfficientNetBuilder` would give, and the 5 feature taps timm reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# timm `_gen_mobilenet_v2`: one block string per stage.
MOBILENETV2_ARCH = (
    "ds_r1_k3_s1_c16",
    "ir_r2_k3_s2_e6_c24",
    "ir_r3_k3_s2_e6_c32",
    "ir_r4_k3_s2_e6_c64",
    "ir_r3_k3_s1_e6_c96",
    "ir_r3_k3_s2_e6_c160",
    "ir_r1_k3_s1_e6_c320",
)
STEM_SIZE = 32
NUM_FEATURES = 1280


@dataclass(frozen=True)
class ArchConfig:
    """A MobileNetV2 variant: width and depth multipliers; `fix_stem_head` keeps the stem (32), the head
    (1280) and the first and last stage depths unscaled, as timm's `..d` variants do."""

    channel_multiplier: float = 1.0
    depth_multiplier: float = 1.0
    fix_stem_head: bool = False
    stages: tuple[str, ...] = MOBILENETV2_ARCH


@dataclass(frozen=True)
class BlockSpec:
    """One block: type 'ds' (DepthwiseSeparableConv) or 'ir' (InvertedResidual), channels, stride."""

    block_type: str
    in_chs: int
    out_chs: int
    kernel_size: int
    stride: int
    exp_ratio: float
    noskip: bool
    drop_path_rate: float
    stage: int
    index: int  # index inside the stage

    @property
    def mid_chs(self) -> int:
        return make_divisible(self.in_chs * self.exp_ratio) if self.block_type == "ir" else self.in_chs

    @property
    def has_skip(self) -> bool:
        return self.stride == 1 and self.in_chs == self.out_chs and not self.noskip


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """timm's make_divisible: nearest multiple of `divisor`, never more than 10% below `v`."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def round_channels(channels: int, multiplier: float = 1.0) -> int:
    """timm's round_channels (divisor 8)."""
    return make_divisible(channels * multiplier) if multiplier else channels


def decode_block_str(block_str: str) -> tuple[dict, int]:
    """'ir_r2_k3_s2_e6_c24' -> (block args, repeats). Supports the options this family uses."""
    block_type, *ops = block_str.split("_")
    if block_type not in ("ds", "ir"):
        raise ValueError(f"block type {block_type!r} in {block_str!r} is not part of MobileNetV2 (ds, ir)")
    args = {"block_type": block_type, "exp_ratio": 1.0, "noskip": False}
    repeats = 1
    keys = {"k": "kernel_size", "s": "stride", "e": "exp_ratio", "c": "out_chs"}
    for op in ops:
        if op == "noskip":
            args["noskip"] = True
        elif op[0] == "r":
            repeats = int(op[1:])
        elif op[0] in keys:
            args[keys[op[0]]] = float(op[1:]) if op[0] == "e" else int(op[1:])
        else:
            raise ValueError(f"unsupported block option {op!r} in {block_str!r}")
    return args, repeats


def stage_depth(repeats: int, multiplier: float) -> int:
    """timm's `_scale_stage_depth` with depth_trunc='ceil' for one block string per stage."""
    return int(math.ceil(repeats * multiplier))


def stem_size(arch: ArchConfig) -> int:
    return STEM_SIZE if arch.fix_stem_head else round_channels(STEM_SIZE, arch.channel_multiplier)


def head_size(arch: ArchConfig) -> int:
    if arch.fix_stem_head:
        return NUM_FEATURES
    return max(NUM_FEATURES, round_channels(NUM_FEATURES, arch.channel_multiplier))


def build_block_specs(arch: ArchConfig, drop_path_rate: float = 0.0) -> list[list[BlockSpec]]:
    """Per-stage block specs with timm's channel rounding, depth scaling and per-block drop-path rate
    (`drop_path_rate * global_block_idx / total_blocks`)."""
    last = len(arch.stages) - 1
    decoded = []
    for stage_idx, block_str in enumerate(arch.stages):
        args, repeats = decode_block_str(block_str)
        fixed = arch.fix_stem_head and stage_idx in (0, last)
        decoded.append((args, stage_depth(repeats, 1.0 if fixed else arch.depth_multiplier)))
    total = sum(depth for _, depth in decoded)
    in_chs, block_idx, stages = stem_size(arch), 0, []
    for stage_idx, (args, depth) in enumerate(decoded):
        stage = []
        for i in range(depth):
            out_chs = round_channels(args["out_chs"], arch.channel_multiplier)
            stage.append(
                BlockSpec(
                    block_type=args["block_type"],
                    in_chs=in_chs,
                    out_chs=out_chs,
                    kernel_size=args["kernel_size"],
                    stride=args["stride"] if i == 0 else 1,
                    exp_ratio=args["exp_ratio"],
                    noskip=args["noskip"],
                    drop_path_rate=drop_path_rate * block_idx / total,
                    stage=stage_idx,
                    index=i,
                )
            )
            in_chs, block_idx = out_chs, block_idx + 1
        stages.append(stage)
    return stages


def feature_taps(stages: list[list[BlockSpec]], stem_chs: int) -> list[dict]:
    """timm's `builder.features` for 'bottleneck' location: one tap at the end of each stage followed by a
    stride-2 stage (or the last stage). `stage` is 1-based over blocks (0 would be the stem)."""
    taps, reduction = [], 2
    if stages[0][0].stride > 1:
        taps.append({"module": "bn1", "num_chs": stem_chs, "stage": 0, "reduction": reduction})
    for stage_idx, stage in enumerate(stages):
        reduction *= stage[0].stride
        is_last = stage_idx + 1 == len(stages)
        if is_last or stages[stage_idx + 1][0].stride > 1:
            taps.append(
                {
                    "stage": stage_idx + 1,
                    "reduction": reduction,
                    "module": f"blocks.{stage_idx}",
                    "num_chs": stage[-1].out_chs,
                }
            )
    return taps
