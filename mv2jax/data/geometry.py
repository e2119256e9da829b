"""Geometric image ops identical to torchvision's `transforms.functional` and timm's on PIL images: resize (with
PIL's own antialiasing), keep-ratio resize, centre crop or pad, border trim, resized crop, RandomResizedCrop's box
sampling, flips. Images are PIL (RGB uint8 in and out); sizes are (height, width).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps

Size = tuple[int, int]  # (height, width)
# timm's interpolation names (Pillow 13 also has MKS filters, which torchvision and timm do not accept)
INTERPOLATIONS = {
    name: Image.Resampling[name.upper()] for name in ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
}


def str_to_pil_interp(interpolation: str | Image.Resampling) -> Image.Resampling:
    """'bicubic' -> Image.Resampling.BICUBIC (PIL filters pass through)."""
    if isinstance(interpolation, str):
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}")
        return INTERPOLATIONS[interpolation]
    return Image.Resampling(interpolation)


def as_size(size: int | Sequence[int]) -> Size:
    """An int -> (size, size); a pair -> (height, width) as ints."""
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize(img: Image.Image, size: int | Size, interpolation: str | Image.Resampling) -> Image.Image:
    """torchvision `F.resize`: an int sets the shorter side (longer = int(size * long / short)), a pair (h, w)
    is exact; unchanged image when the size already matches."""
    w, h = img.size
    if isinstance(size, int):
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        new_h, new_w = size
    if (new_h, new_w) == (h, w):
        return img
    return img.resize((new_w, new_h), str_to_pil_interp(interpolation))


def resize_keep_ratio(
    img: Image.Image, size: Size, interpolation: str | Image.Resampling, longest: float = 0.0
) -> Image.Image:
    """timm `ResizeKeepRatio` without its random scale/aspect: fit the shorter (longest=0) or longer (longest=1)
    side to `size`, keeping the aspect ratio (sides rounded half to even, as Python's round)."""
    img_size = (img.height, img.width)
    ratio_h, ratio_w = img.height / size[0], img.width / size[1]
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    new_size = tuple(round(x * 1.0 / ratio) for x in img_size)
    return resize(img, new_size, interpolation)


def _fill_for(img: Image.Image, fill: float | Sequence[float]) -> int | tuple[int, ...]:
    """torchvision's `_parse_fill` for a uint8 image: one int per band."""
    bands = len(img.getbands())
    fill = tuple(fill) if isinstance(fill, (list, tuple)) else (fill,)
    fill = fill * bands if len(fill) == 1 else fill
    return tuple(int(v) for v in fill) if bands > 1 else int(fill[0])


def center_crop(img: Image.Image, size: int | Size, fill: float | Sequence[float] = 0) -> Image.Image:
    """torchvision `F.center_crop` / timm `center_crop_or_pad`: pad with `fill` (left/top get the smaller half)
    where the image is smaller than `size`, then crop at int(round((H - h) / 2)), int(round((W - w) / 2))."""
    crop_h, crop_w = as_size(size)
    w, h = img.size
    if crop_w > w or crop_h > h:
        padding_ltrb = (
            (crop_w - w) // 2 if crop_w > w else 0,
            (crop_h - h) // 2 if crop_h > h else 0,
            (crop_w - w + 1) // 2 if crop_w > w else 0,
            (crop_h - h + 1) // 2 if crop_h > h else 0,
        )
        img = ImageOps.expand(img, border=padding_ltrb, fill=_fill_for(img, fill))
        w, h = img.size
        if (crop_w, crop_h) == (w, h):
            return img
    top, left = int(round((h - crop_h) / 2.0)), int(round((w - crop_w) / 2.0))
    return img.crop((left, top, left + crop_w, top + crop_h))


def trim_border(img: Image.Image, border: int) -> Image.Image:
    """timm `TrimBorder` (including its clamp of `left` by the image height)."""
    w, h = img.size
    top, left = min(border, h), min(border, h)
    return img.crop((left, top, left + max(0, w - 2 * border), top + max(0, h - 2 * border)))


def resized_crop(
    img: Image.Image,
    top: int,
    left: int,
    height: int,
    width: int,
    size: int | Size,
    interpolation: str | Image.Resampling,
) -> Image.Image:
    """torchvision `F.resized_crop` on PIL: crop the box, then resize it to `size` ((h, w); an int = square)."""
    return resize(img.crop((left, top, left + width, top + height)), as_size(size), interpolation)


def get_rrc_params(
    img: Image.Image, scale: Sequence[float], ratio: Sequence[float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """timm `RandomResizedCropAndInterpolation.get_params`: (top, left, height, width) of a crop with area
    fraction ~ U(scale) and log-uniform aspect (w/h) in `ratio`; 10 attempts, then a central fallback crop."""
    img_w, img_h = img.size
    area = img_w * img_h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = float(rng.uniform(*scale)) * area
        aspect_ratio = math.exp(float(rng.uniform(*log_ratio)))
        target_w = int(round(math.sqrt(target_area * aspect_ratio)))
        target_h = int(round(math.sqrt(target_area / aspect_ratio)))
        if target_w <= img_w and target_h <= img_h:
            top = int(rng.integers(0, img_h - target_h + 1))
            left = int(rng.integers(0, img_w - target_w + 1))
            return top, left, target_h, target_w
    in_ratio = img_w / img_h
    if in_ratio < min(ratio):
        target_w, target_h = img_w, int(round(img_w / min(ratio)))
    elif in_ratio > max(ratio):
        target_w, target_h = int(round(img_h * max(ratio))), img_h
    else:
        target_w, target_h = img_w, img_h
    return (img_h - target_h) // 2, (img_w - target_w) // 2, target_h, target_w


def hflip(img: Image.Image) -> Image.Image:
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def vflip(img: Image.Image) -> Image.Image:
    return img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
