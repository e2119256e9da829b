"""timm's RandomErasing on normalised float32 HWC numpy images (or NHWC batches).

Same box sampling as `timm.data.random_erasing.RandomErasing`: with probability `probability`, erase
`count` boxes (uniform in [min_count, max_count]); each box has area uniform in [min_area, max_area] of the
image divided by `count` and a log-uniform aspect ratio, 10 attempts to fit strictly inside the image. Fill:
'const' zeros, 'rand' one N(0, 1) colour per box, 'pixel' N(0, 1) per pixel and channel. All randomness comes
from the `numpy.random.Generator` passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_MODES = ("const", "rand", "pixel", "")


@dataclass(frozen=True)
class RandomErasing:
    """Erase random boxes of a float HWC image in place (timm's defaults). Returns the same array."""

    probability: float = 0.5
    min_area: float = 0.02
    max_area: float = 1 / 3
    min_aspect: float = 0.3
    max_aspect: float | None = None
    mode: str = "const"
    min_count: int = 1
    max_count: int | None = None
    num_splits: int = 0

    def __post_init__(self) -> None:
        if self.mode.lower() not in _MODES:
            raise ValueError(f"RandomErasing mode must be one of {_MODES}, got {self.mode!r}")

    @property
    def log_aspect_ratio(self) -> tuple[float, float]:
        return math.log(self.min_aspect), math.log(self.max_aspect or 1 / self.min_aspect)

    def sample_box(
        self, img_h: int, img_w: int, count: int, rng: np.random.Generator
    ) -> tuple[int, int, int, int] | None:
        """One box (top, left, height, width) for an `img_h` x `img_w` image, or None after 10 misses."""
        for _ in range(10):
            target_area = float(rng.uniform(self.min_area, self.max_area)) * (img_h * img_w) / count
            aspect_ratio = math.exp(float(rng.uniform(*self.log_aspect_ratio)))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < img_w and h < img_h:
                top = int(rng.integers(0, img_h - h + 1))
                left = int(rng.integers(0, img_w - w + 1))
                return top, left, h, w
        return None

    def fill_values(self, shape: tuple[int, int, int], dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
        """Values for a (h, w, c) box, broadcastable to it."""
        mode = self.mode.lower()
        if mode == "pixel":
            return rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
        if mode == "rand":
            return rng.standard_normal((1, 1, shape[2]), dtype=np.float32).astype(dtype, copy=False)
        return np.zeros((1, 1, shape[2]), dtype=dtype)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Erase boxes of one float HWC image in place; returns `img`."""
        if rng.random() > self.probability:
            return img
        img_h, img_w, chan = img.shape
        max_count = self.max_count or self.min_count
        count = self.min_count if self.min_count == max_count else int(rng.integers(self.min_count, max_count + 1))
        for _ in range(count):
            box = self.sample_box(img_h, img_w, count, rng)
            if box is not None:
                top, left, h, w = box
                img[top : top + h, left : left + w, :] = self.fill_values((h, w, chan), img.dtype, rng)
        return img

    def erase_batch(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Erase an NHWC batch in place, skipping the first `N // num_splits` (clean) images when num_splits > 1."""
        start = batch.shape[0] // self.num_splits if self.num_splits > 1 else 0
        for i in range(start, batch.shape[0]):
            self(batch[i], rng)
        return batch
