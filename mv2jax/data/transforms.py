"""Image transforms identical to timm's `create_transform`, with numpy + Pillow only: the eval and train
pipelines and the conversion to arrays (the PIL ops are in `geometry` and `color`).

Every PIL call is the one torchvision / timm make on PIL images (resize with PIL's own antialiasing, crops,
padding, flips, ImageEnhance colour jitter), so outputs match pixel for pixel; the float conversion is the same
float32 arithmetic as `ToTensor` + `Normalize`. Layouts: PIL images in (RGB, uint8); arrays out are HWC, float32
normalised (or uint8 when `normalize=False`). Sizes are (height, width). Training transforms take an explicit
`numpy.random.Generator` and draw all their randomness from it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from mv2jax.data.color import ColorJitter, to_grayscale_rgb
from mv2jax.data.config import DATA_CONFIG_KEYS, DEFAULT_CROP_PCT, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from mv2jax.data.geometry import (
    Size,
    as_size,
    center_crop,
    get_rrc_params,
    hflip,
    resize,
    resize_keep_ratio,
    resized_crop,
    str_to_pil_interp,
    trim_border,
    vflip,
)
from mv2jax.data.randaugment import RandAugment, rand_augment_transform
from mv2jax.data.random_erasing import RandomErasing

RANDOM_TRAIN_INTERPOLATION = ("bilinear", "bicubic")  # timm's 'random' train interpolation picks one per image


def to_uint8_array(img: Image.Image) -> np.ndarray:
    """PIL image -> uint8 HWC array (a copy; grey images get a channel axis)."""
    arr = np.array(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def normalize(arr: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 HWC -> float32 HWC, ((x / 255) - mean) / std, in float32 like torchvision ToTensor + Normalize."""
    x = arr.astype(np.float32)  # in place from here: the same float32 operations without full-size temporaries
    x /= np.float32(255)
    x -= np.asarray(mean, dtype=np.float32)
    x /= np.asarray(std, dtype=np.float32)
    return x


def _to_output(img: Image.Image, mean, std, do_normalize: bool) -> np.ndarray:
    arr = to_uint8_array(img)
    return normalize(arr, mean, std) if do_normalize else arr


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
        size = as_size(self.img_size)
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
        img_size=as_size(img_size),
        scale=tuple(scale or (0.08, 1.0)),
        ratio=tuple(ratio or (3.0 / 4.0, 4.0 / 3.0)),
        interpolation=interpolation,
        hflip=hflip,
        vflip=vflip,
        rand_augment=rand_augment,
        color_jitter=jitter,
        color_jitter_prob=color_jitter_prob,
        grayscale_prob=grayscale_prob,
        mean=mean,
        std=std,
        normalize=normalize,
        random_erasing=erasing,
    )


def create_eval_transform(data_config: Mapping[str, Any], **overrides: Any) -> EvalTransform:
    """The eval transform of a data config: the one every evaluation, export and check preprocesses with.

    `data_config` holds at least `resolve_data_config`'s keys (input_size, interpolation, mean, std, crop_pct,
    crop_mode; other keys, e.g. an export sidecar's, are ignored); `overrides` are further `create_transform`
    arguments (`crop_border_pixels`, `normalize`) or replace a config value."""
    kwargs = {**{key: data_config[key] for key in DATA_CONFIG_KEYS}, **overrides}
    return create_transform(is_training=False, **kwargs)


def _rand_augment(
    auto_augment: str | None, img_size: int | Size, interpolation: str, mean: tuple[float, ...], force_jitter: bool
) -> tuple[RandAugment | None, bool]:
    """(RandAugment or None, whether it turns colour jitter off), with timm's hparams for the image size."""
    if not auto_augment:
        return None, False
    if not auto_augment.startswith("rand"):
        raise NotImplementedError(f"auto_augment {auto_augment!r}: only RandAugment ('rand-...') is supported")
    hparams = {
        "translate_const": int(min(as_size(img_size)) * 0.45),
        "img_mean": tuple(min(255, round(255 * x)) for x in mean),
    }
    if interpolation and interpolation != "random":
        hparams["interpolation"] = str_to_pil_interp(interpolation)
    return rand_augment_transform(auto_augment, hparams), not (force_jitter or "3a" in auto_augment)
