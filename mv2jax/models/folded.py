"""The static structure of the BatchNorm-folded network, which the backends run and the exporters write: a
`ConvSpec` per folded convolution and a `FusedBlock` per block."""

from __future__ import annotations

import dataclasses

# The folded convolutions of each block kind, in order (timm's DepthwiseSeparableConv and InvertedResidual).
BLOCK_CONVS = {"ds": ("dw", "pw"), "ir": ("pw", "dw", "pwl")}


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """Static description of one BatchNorm-folded convolution: kernel size, stride, symmetric padding,
    depthwise or dense, and the activation that follows (None: linear)."""

    kernel_size: int
    stride: int
    padding: int
    depthwise: bool
    act: str | None


@dataclasses.dataclass(frozen=True)
class FusedBlock:
    """One block of the folded network: its `kind` ('ds': depthwise separable, dw -> pw; 'ir': inverted residual,
    pw expand -> dw -> pw linear), its folded convolutions in that order, and whether its input is added to its
    output (`skip`)."""

    kind: str
    convs: tuple[ConvSpec, ...]
    skip: bool

    def __post_init__(self) -> None:
        if self.kind not in BLOCK_CONVS:
            raise ValueError(f"unknown block kind {self.kind!r}: use one of {', '.join(BLOCK_CONVS)}")
        if len(self.convs) != len(BLOCK_CONVS[self.kind]):
            raise ValueError(f"a {self.kind!r} block has {len(BLOCK_CONVS[self.kind])} convolutions, got {self.convs}")
