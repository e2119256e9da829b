"""Colour ops identical to torchvision's on PIL images: `ColorJitter` (ImageEnhance brightness, contrast,
saturation, and the HSV hue shift, in a random order) and grayscale to 3 channels. Images are PIL (RGB uint8 in and
out); randomness comes from an explicit `numpy.random.Generator`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance


def adjust_hue(img: Image.Image, hue_factor: float) -> Image.Image:
    """torchvision `F.adjust_hue` on PIL: shift the HSV hue byte by int(hue_factor * 255), wrapping."""
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f"hue_factor ({hue_factor}) is not in [-0.5, 0.5].")
    if img.mode in {"L", "1", "I", "F"}:
        return img
    h, s, v = img.convert("HSV").split()
    np_h = np.array(h, dtype=np.uint8)
    np_h += np.uint8(int(hue_factor * 255) % 256)  # uint8 add wraps, as torchvision's does
    return Image.merge("HSV", (Image.fromarray(np_h), s, v)).convert(img.mode)


_ADJUST = (
    lambda img, f: ImageEnhance.Brightness(img).enhance(f),
    lambda img, f: ImageEnhance.Contrast(img).enhance(f),
    lambda img, f: ImageEnhance.Color(img).enhance(f),
    adjust_hue,
)


def _jitter_range(value, center: float = 1.0, bound=(0.0, float("inf")), clip_first_on_zero=True):
    """torchvision `ColorJitter._check_input`: a number v -> [center - v, center + v]; None when a no-op."""
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"color jitter value must be non negative, got {value}")
        lo, hi = center - float(value), center + float(value)
        lo = max(lo, 0.0) if clip_first_on_zero else lo
    else:
        lo, hi = (float(v) for v in value)
    if not bound[0] <= lo <= hi <= bound[1]:
        raise ValueError(f"color jitter range {(lo, hi)} not within {bound}")
    return None if lo == hi == center else (lo, hi)


@dataclass(frozen=True)
class ColorJitter:
    """torchvision `ColorJitter` on PIL: brightness, contrast, saturation, hue factors ~ U(range), applied in a
    random order. Ranges are (min, max) or None (off)."""

    brightness: tuple[float, float] | None = None
    contrast: tuple[float, float] | None = None
    saturation: tuple[float, float] | None = None
    hue: tuple[float, float] | None = None

    @classmethod
    def from_args(cls, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0) -> ColorJitter:
        """Build from torchvision's constructor arguments (numbers or (min, max) pairs)."""
        return cls(
            _jitter_range(brightness),
            _jitter_range(contrast),
            _jitter_range(saturation),
            _jitter_range(hue, center=0.0, bound=(-0.5, 0.5), clip_first_on_zero=False),
        )

    def get_params(self, rng: np.random.Generator) -> tuple[list[int], list[float | None]]:
        """(order of the 4 adjustments, [brightness, contrast, saturation, hue] factors or None)."""
        order = [int(i) for i in rng.permutation(4)]
        ranges = (self.brightness, self.contrast, self.saturation, self.hue)
        return order, [None if r is None else float(rng.uniform(r[0], r[1])) for r in ranges]

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        return color_jitter(img, *self.get_params(rng))


def color_jitter(img: Image.Image, order: Sequence[int], factors: Sequence[float | None]) -> Image.Image:
    """Apply brightness (0), contrast (1), saturation (2), hue (3) in `order`, skipping None factors."""
    for i in order:
        if factors[i] is not None:
            img = _ADJUST[i](img, factors[i])
    return img


def to_grayscale_rgb(img: Image.Image) -> Image.Image:
    """torchvision `to_grayscale(img, 3)`: PIL 'L' conversion copied into 3 channels."""
    gray = np.array(img.convert("L"), dtype=np.uint8)
    return Image.fromarray(np.dstack([gray, gray, gray]))
