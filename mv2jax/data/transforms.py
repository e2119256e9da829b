"""Image transforms identical to timm's `create_transform`, with numpy + Pillow only.

Every PIL call is the one torchvision / timm make on PIL images (resize with PIL's own antialiasing, crops,
padding, flips, ImageEnhance colour jitter), so outputs match pixel for pixel; the float conversion is the same
float32 arithmetic as `ToTensor` + `Normalize`. Layouts: PIL images in (RGB, uint8); arrays out are HWC, float32
normalised (or uint8 when `normalize=False`). Sizes are (height, width). Training transforms take an explicit
`numpy.random.Generator` and draw all their randomness from it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from mv2jax.data.config import DEFAULT_CROP_PCT, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from mv2jax.data.randaugment import RandAugment, rand_augment_transform
from mv2jax.data.random_erasing import RandomErasing

Size = tuple[int, int]  # (height, width)
# timm's interpolation names (Pillow 13 also has MKS filters, which torchvision and timm do not accept)
INTERPOLATIONS = {
    name: Image.Resampling[name.upper()] for name in ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
}
RANDOM_TRAIN_INTERPOLATION = ("bilinear", "bicubic")  # timm's 'random' train interpolation picks one per image


def str_to_pil_interp(interpolation: str | Image.Resampling) -> Image.Resampling:
    """'bicubic' -> Image.Resampling.BICUBIC (PIL filters pass through)."""
    if isinstance(interpolation, str):
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}")
        return INTERPOLATIONS[interpolation]
    return Image.Resampling(interpolation)


def _pair(size: int | Sequence[int]) -> Size:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


# --- geometry (torchvision.transforms.functional on PIL) ----------------------------------------------------------

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
    crop_h, crop_w = _pair(size)
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
    img: Image.Image, top: int, left: int, height: int, width: int, size: int | Size,
    interpolation: str | Image.Resampling,
) -> Image.Image:
    """torchvision `F.resized_crop` on PIL: crop the box, then resize it to `size` ((h, w); an int = square)."""
    return resize(img.crop((left, top, left + width, top + height)), _pair(size), interpolation)


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


# --- colour ---------------------------------------------------------------------------------------------------

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
            _jitter_range(brightness), _jitter_range(contrast), _jitter_range(saturation),
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


# --- to array -------------------------------------------------------------------------------------------------

def to_uint8_array(img: Image.Image) -> np.ndarray:
    """PIL image -> uint8 HWC array (a copy; grey images get a channel axis)."""
    arr = np.array(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def normalize(arr: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 HWC -> float32 HWC, ((x / 255) - mean) / std, in float32 like torchvision ToTensor + Normalize."""
    x = arr.astype(np.float32) / np.float32(255)
    return (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)


def _to_output(img: Image.Image, mean, std, do_normalize: bool) -> np.ndarray:
    arr = to_uint8_array(img)
    return normalize(arr, mean, std) if do_normalize else arr


# --- pipelines ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalTransform:
    """timm's eval transform: resize by `crop_pct`, crop to `img_size` ((h, w) or int), to array.

    `crop_mode`: 'center' (shorter side to size / crop_pct, centre crop), 'squash' (both sides to size /
    crop_pct, centre crop), 'border' (longer side to size / crop_pct, pad with the mean colour). Returns float32
    HWC normalised, or uint8 HWC when `normalize=False`. Deterministic; `rng` is accepted and ignored so eval and
    train transforms share one call signature.
    """

    img_size: int | Size = 224
    crop_pct: float | None = None
    crop_mode: str | None = None
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD
    normalize: bool = True
    crop_border_pixels: int | None = None

    def __post_init__(self) -> None:
        if self.crop_mode not in (None, "center", "squash", "border"):
            raise ValueError(f"crop_mode must be 'center', 'squash' or 'border', got {self.crop_mode!r}")
        str_to_pil_interp(self.interpolation)

    def resize_and_crop(self, img: Image.Image) -> Image.Image:
        """The PIL part of the transform (uint8 RGB in and out)."""
        crop_pct = self.crop_pct or DEFAULT_CROP_PCT
        size = _pair(self.img_size)
        scale_size = (math.floor(size[0] / crop_pct), math.floor(size[1] / crop_pct))
        if self.crop_border_pixels:
            img = trim_border(img, self.crop_border_pixels)
        if self.crop_mode == "squash":
            return center_crop(resize(img, scale_size, self.interpolation), size)
        if self.crop_mode == "border":
            img = resize_keep_ratio(img, scale_size, self.interpolation, longest=1.0)
            return center_crop(img, size, fill=[round(255 * v) for v in self.mean])
        if scale_size[0] == scale_size[1]:
            img = resize(img, scale_size[0], self.interpolation)
        else:
            img = resize_keep_ratio(img, scale_size, self.interpolation)
        return center_crop(img, size)

    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> np.ndarray:
        return _to_output(self.resize_and_crop(img), self.mean, self.std, self.normalize)


@dataclass(frozen=True)
class TrainTransform:
    """timm's RandomResizedCrop -> flips -> RandAugment | colour jitter -> [grayscale] -> to array -> erasing.

    `interpolation` 'random' picks bilinear or bicubic per image. Call with a PIL image and a
    `numpy.random.Generator`; returns float32 HWC normalised (uint8 HWC, without erasing, if `normalize=False`).
    """

    img_size: Size = (224, 224)
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    interpolation: str = "random"
    hflip: float = 0.5
    vflip: float = 0.0
    rand_augment: RandAugment | None = None
    color_jitter: ColorJitter | None = None
    color_jitter_prob: float | None = None
    grayscale_prob: float = 0.0
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD
    normalize: bool = True
    random_erasing: RandomErasing | None = None

    def random_resized_crop(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        top, left, height, width = get_rrc_params(img, self.scale, self.ratio, rng)
        interpolation = self.interpolation
        if interpolation == "random":
            interpolation = RANDOM_TRAIN_INTERPOLATION[int(rng.integers(len(RANDOM_TRAIN_INTERPOLATION)))]
        return resized_crop(img, top, left, height, width, self.img_size, interpolation)

    def augment(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        """The PIL part (uint8 RGB in and out), drawing in timm's order."""
        img = self.random_resized_crop(img, rng)
        if self.hflip > 0 and rng.random() < self.hflip:
            img = hflip(img)
        if self.vflip > 0 and rng.random() < self.vflip:
            img = vflip(img)
        if self.rand_augment is not None:
            img = self.rand_augment(img, rng)
        if self.color_jitter is not None:
            if self.color_jitter_prob is None or rng.random() <= self.color_jitter_prob:
                img = self.color_jitter(img, rng)
        if self.grayscale_prob and rng.random() < self.grayscale_prob:
            img = to_grayscale_rgb(img)
        return img

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> np.ndarray:
        arr = _to_output(self.augment(img, rng), self.mean, self.std, self.normalize)
        if self.normalize and self.random_erasing is not None:
            arr = self.random_erasing(arr, rng)
        return arr


def create_transform(
    input_size: int | Sequence[int] = 224,
    is_training: bool = False,
    no_aug: bool = False,
    train_crop_mode: str | None = None,
    scale: Sequence[float] | None = None,
    ratio: Sequence[float] | None = None,
    hflip: float = 0.5,
    vflip: float = 0.0,
    color_jitter: float | Sequence[float] | None = 0.4,
    color_jitter_prob: float | None = None,
    force_color_jitter: bool = False,
    grayscale_prob: float = 0.0,
    gaussian_blur_prob: float = 0.0,
    auto_augment: str | None = None,
    interpolation: str = "bilinear",
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    re_prob: float = 0.0,
    re_mode: str = "const",
    re_count: int = 1,
    re_num_splits: int = 0,
    crop_pct: float | None = None,
    crop_mode: str | None = None,
    crop_border_pixels: int | None = None,
    use_prefetcher: bool = False,
    normalize: bool = True,
) -> EvalTransform | TrainTransform:
    """timm's `create_transform` (same argument names and defaults): an `EvalTransform` or `TrainTransform`.

    `input_size` is an int or (C, H, W) / (H, W). For training, `interpolation` is timm's train interpolation
    ('random' = bilinear or bicubic per image). `use_prefetcher=True` or `normalize=False` give uint8 HWC output
    (and no random erasing), as timm's prefetcher path does. Not supported (raise): train crop modes other than
    'rrc', Gaussian blur, AutoAugment / AugMix policies.
    """
    img_size = tuple(input_size[-2:]) if isinstance(input_size, (tuple, list)) else int(input_size)
    mean, std = tuple(mean), tuple(std)
    normalize = normalize and not use_prefetcher
    if is_training and no_aug:
        # timm: Resize(img_size) + CenterCrop(img_size); an (h, w) Resize is exact, i.e. 'squash' at crop_pct 1
        mode = "squash" if isinstance(img_size, tuple) else "center"
        interp = "bilinear" if interpolation == "random" else interpolation
        return EvalTransform(img_size, 1.0, mode, interp, mean, std, normalize)
    if not is_training:
        return EvalTransform(img_size, crop_pct, crop_mode, interpolation, mean, std, normalize, crop_border_pixels)
    if train_crop_mode not in (None, "rrc"):
        raise NotImplementedError(f"train_crop_mode {train_crop_mode!r} (only 'rrc')")
    if gaussian_blur_prob:
        raise NotImplementedError("gaussian_blur_prob")
    rand_augment, jitter_off = _rand_augment(auto_augment, img_size, interpolation, mean, force_color_jitter)
    jitter = None
    if color_jitter is not None and not jitter_off:
        jitter_args = tuple(color_jitter) if isinstance(color_jitter, (tuple, list)) else (float(color_jitter),) * 3
        if len(jitter_args) not in (3, 4):
            raise ValueError(f"color_jitter needs 3 or 4 values, got {color_jitter}")
        jitter = ColorJitter.from_args(*jitter_args)
    erasing = RandomErasing(re_prob, mode=re_mode, max_count=re_count, num_splits=re_num_splits) if re_prob else None
    return TrainTransform(
        img_size=_pair(img_size), scale=tuple(scale or (0.08, 1.0)), ratio=tuple(ratio or (3.0 / 4.0, 4.0 / 3.0)),
        interpolation=interpolation, hflip=hflip, vflip=vflip, rand_augment=rand_augment, color_jitter=jitter,
        color_jitter_prob=color_jitter_prob, grayscale_prob=grayscale_prob, mean=mean, std=std, normalize=normalize,
        random_erasing=erasing,
    )


def _rand_augment(
    auto_augment: str | None, img_size: int | Size, interpolation: str, mean: tuple[float, ...], force_jitter: bool
) -> tuple[RandAugment | None, bool]:
    """(RandAugment or None, whether it turns colour jitter off), with timm's hparams for the image size."""
    if not auto_augment:
        return None, False
    if not auto_augment.startswith("rand"):
        raise NotImplementedError(f"auto_augment {auto_augment!r}: only RandAugment ('rand-...') is supported")
    hparams = {
        "translate_const": int(min(_pair(img_size)) * 0.45),
        "img_mean": tuple(min(255, round(255 * x)) for x in mean),
    }
    if interpolation and interpolation != "random":
        hparams["interpolation"] = str_to_pil_interp(interpolation)
    return rand_augment_transform(auto_augment, hparams), not (force_jitter or "3a" in auto_augment)
