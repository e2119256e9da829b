"""RandAugment exactly as timm builds it from a config string (`rand-m9-mstd0.5-inc1`), on PIL images.

Same op sets, level-to-argument maps, PIL calls, fill colour, resampling choice, per-op probability, magnitude
noise and op choice as `timm.data.auto_augment`; every random draw comes from the `numpy.random.Generator` passed
in, in the same order timm draws from Python's `random` / `np.random`, so the distributions are timm's and a
given generator state gives a reproducible image (multi-process loading stays deterministic).
Images are PIL (RGB uint8 in, RGB uint8 out).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

FILL = (128, 128, 128)
LEVEL_DENOM = 10.0  # 'Mx' magnitude is x / LEVEL_DENOM of each op's range
HPARAMS_DEFAULT: Mapping[str, Any] = {"translate_const": 250, "img_mean": FILL}
RANDOM_INTERPOLATION = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)
_PIL_INTERP = {m.name.lower(): m for m in Image.Resampling}

RAND_TRANSFORMS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
RAND_INCREASING_TRANSFORMS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
RAND_3A = ("SolarizeIncreasing", "Desaturate", "GaussianBlur")
RAND_WEIGHTED_3A = {
    "SolarizeIncreasing": 6,
    "Desaturate": 6,
    "GaussianBlur": 6,
    "Rotate": 3,
    "ShearX": 2,
    "ShearY": 2,
    "PosterizeIncreasing": 1,
    "AutoContrast": 1,
    "ColorIncreasing": 1,
    "SharpnessIncreasing": 1,
    "ContrastIncreasing": 1,
    "BrightnessIncreasing": 1,
    "Equalize": 1,
    "Invert": 1,
}
RAND_WEIGHTED_0 = {
    "Rotate": 3,
    "ShearX": 2,
    "ShearY": 2,
    "TranslateXRel": 1,
    "TranslateYRel": 1,
    "ColorIncreasing": 0.25,
    "SharpnessIncreasing": 0.25,
    "AutoContrast": 0.25,
    "SolarizeIncreasing": 0.05,
    "SolarizeAdd": 0.05,
    "ContrastIncreasing": 0.05,
    "BrightnessIncreasing": 0.05,
    "Equalize": 0.05,
    "PosterizeIncreasing": 0.05,
    "Invert": 0.05,
}
# Ops that resample (timm picks the resampling filter inside these, after the level arguments).
GEOMETRIC_OPS = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel", "TranslateYRel"})


# --- PIL ops: (img, *level_args, resample, fillcolor) -> img -------------------------------------------------


def _affine(img: Image.Image, matrix: tuple[float, ...], resample: Image.Resampling, fillcolor) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=resample, fillcolor=fillcolor)


def shear_x(img, factor, **kw):
    return _affine(img, (1, factor, 0, 0, 1, 0), **kw)


def shear_y(img, factor, **kw):
    return _affine(img, (1, 0, 0, factor, 1, 0), **kw)


def translate_x_rel(img, pct, **kw):
    return _affine(img, (1, 0, pct * img.size[0], 0, 1, 0), **kw)


def translate_y_rel(img, pct, **kw):
    return _affine(img, (1, 0, 0, 0, 1, pct * img.size[1]), **kw)


def translate_x_abs(img, pixels, **kw):
    return _affine(img, (1, 0, pixels, 0, 1, 0), **kw)


def translate_y_abs(img, pixels, **kw):
    return _affine(img, (1, 0, 0, 0, 1, pixels), **kw)


def rotate(img, degrees, *, resample, fillcolor):
    return img.rotate(degrees, resample=resample, fillcolor=fillcolor)


def solarize_add(img, add, thresh=128, **_):
    lut = [min(255, i + add) if i < thresh else i for i in range(256)]
    if img.mode not in ("L", "RGB"):
        return img
    return img.point(lut * 3 if img.mode == "RGB" else lut)


def posterize(img, bits_to_keep, **_):
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        # Keep 0 bits: black. timm relies on Pillow < 11's posterize(img, 0) for this; newer Pillow raises.
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


def desaturate(img, factor, **_):
    return ImageEnhance.Color(img).enhance(min(1.0, max(0.0, 1.0 - factor)))


def _enhance(cls) -> Callable[..., Image.Image]:
    return lambda img, factor, **_: cls(img).enhance(factor)


def _solarize(img, thresh, **_):
    return ImageOps.solarize(img, thresh)


def _blur(img, radius, **_):
    return img.filter(ImageFilter.GaussianBlur(radius=radius))


NAME_TO_OP: Mapping[str, Callable[..., Image.Image]] = {
    "AutoContrast": lambda img, **_: ImageOps.autocontrast(img),
    "Equalize": lambda img, **_: ImageOps.equalize(img),
    "Invert": lambda img, **_: ImageOps.invert(img),
    "Rotate": rotate,
    "Posterize": posterize,
    "PosterizeIncreasing": posterize,
    "PosterizeOriginal": posterize,
    "Solarize": _solarize,
    "SolarizeIncreasing": _solarize,
    "SolarizeAdd": solarize_add,
    "Color": _enhance(ImageEnhance.Color),
    "ColorIncreasing": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "ContrastIncreasing": _enhance(ImageEnhance.Contrast),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "BrightnessIncreasing": _enhance(ImageEnhance.Brightness),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "SharpnessIncreasing": _enhance(ImageEnhance.Sharpness),
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x_abs,
    "TranslateY": translate_y_abs,
    "TranslateXRel": translate_x_rel,
    "TranslateYRel": translate_y_rel,
    "Desaturate": desaturate,
    "GaussianBlur": _blur,
    "GaussianBlurRand": _blur,  # GaussianBlurRand's radius is drawn with its level args
}


# --- level (magnitude) -> op arguments: (level, hparams, rng) -> tuple -------------------------------------------


def _negate_half(v: float, rng: np.random.Generator) -> float:
    return -v if rng.random() > 0.5 else v


def _rotate_arg(level, _h, rng):
    return (_negate_half(level / LEVEL_DENOM * 30.0, rng),)


def _enhance_arg(level, _h, _rng):
    return (level / LEVEL_DENOM * 1.8 + 0.1,)


def _enhance_increasing_arg(level, _h, rng):
    return (max(0.1, 1.0 + _negate_half(level / LEVEL_DENOM * 0.9, rng)),)


def _minmax_arg(level, _h, _rng, min_val=0.0, max_val=1.0):
    return (max(min_val, min(max_val, min_val + (max_val - min_val) * (level / LEVEL_DENOM))),)


def _blur_rand_arg(level, h, rng):
    # timm draws this radius inside the op (no draw sits between, so the sequence is the same) with Python's
    # random.uniform(0.1, 2 * factor), which accepts high < low (factor < 0.05): a + (b - a) * U, as here
    low, high = 0.1, 2.0 * _minmax_arg(level, h, rng)[0]
    return (low + (high - low) * float(rng.random()),)


def _shear_arg(level, _h, rng):
    return (_negate_half(level / LEVEL_DENOM * 0.3, rng),)


def _translate_abs_arg(level, h, rng):
    return (_negate_half(level / LEVEL_DENOM * float(h["translate_const"]), rng),)


def _translate_rel_arg(level, h, rng):
    return (_negate_half(level / LEVEL_DENOM * h.get("translate_pct", 0.45), rng),)


def _posterize_arg(level, _h, _rng):
    return (int(level / LEVEL_DENOM * 4),)


def _solarize_arg(level, _h, _rng):
    return (min(256, int(level / LEVEL_DENOM * 256)),)


LEVEL_TO_ARG: Mapping[str, Callable[..., tuple] | None] = {
    "AutoContrast": None,
    "Equalize": None,
    "Invert": None,
    "Rotate": _rotate_arg,
    "Posterize": _posterize_arg,
    "PosterizeIncreasing": lambda lv, h, r: (4 - _posterize_arg(lv, h, r)[0],),
    "PosterizeOriginal": lambda lv, h, r: (_posterize_arg(lv, h, r)[0] + 4,),
    "Solarize": _solarize_arg,
    "SolarizeIncreasing": lambda lv, h, r: (256 - _solarize_arg(lv, h, r)[0],),
    "SolarizeAdd": lambda lv, _h, _r: (min(128, int(lv / LEVEL_DENOM * 110)),),
    "Color": _enhance_arg,
    "ColorIncreasing": _enhance_increasing_arg,
    "Contrast": _enhance_arg,
    "ContrastIncreasing": _enhance_increasing_arg,
    "Brightness": _enhance_arg,
    "BrightnessIncreasing": _enhance_increasing_arg,
    "Sharpness": _enhance_arg,
    "SharpnessIncreasing": _enhance_increasing_arg,
    "ShearX": _shear_arg,
    "ShearY": _shear_arg,
    "TranslateX": _translate_abs_arg,
    "TranslateY": _translate_abs_arg,
    "TranslateXRel": _translate_rel_arg,
    "TranslateYRel": _translate_rel_arg,
    "Desaturate": lambda lv, h, r: _minmax_arg(lv, h, r, min_val=0.5, max_val=1.0),
    "GaussianBlur": lambda lv, h, r: _minmax_arg(lv, h, r, min_val=0.1, max_val=2.0),
    "GaussianBlurRand": _blur_rand_arg,
}


def _as_resample(value: Any) -> Image.Resampling | tuple[Image.Resampling, ...]:
    """A PIL filter, or a tuple of them to choose from; names ('bicubic') accepted."""
    if isinstance(value, (tuple, list)):
        return tuple(_as_resample(v) for v in value)
    return _PIL_INTERP[value] if isinstance(value, str) else Image.Resampling(value)


@dataclass(frozen=True)
class AugmentOp:
    """One RandAugment op: applied with probability `prob` at a (noisy) `magnitude`, timm's `AugmentOp`.

    `hparams`: `img_mean` (fill colour, RGB uint8), `interpolation` (fixed resampling, else a random choice of
    bilinear/bicubic per call), `translate_const`, `translate_pct`, `magnitude_std` (Gaussian noise; `inf` =
    uniform in [0, magnitude]), `magnitude_max` (clip bound, default 10).
    """

    name: str
    prob: float = 0.5
    magnitude: float = 10
    hparams: Mapping[str, Any] = field(default_factory=lambda: dict(HPARAMS_DEFAULT))

    def __post_init__(self) -> None:
        if self.name not in NAME_TO_OP:
            raise ValueError(f"unknown RandAugment op {self.name!r}")
        if not self.hparams:  # as timm: empty hparams mean the defaults
            object.__setattr__(self, "hparams", dict(HPARAMS_DEFAULT))

    def sample_magnitude(self, rng: np.random.Generator) -> float:
        """The magnitude one call uses: noise as configured, then clipped to [0, magnitude_max or 10]."""
        magnitude = self.magnitude
        std = self.hparams.get("magnitude_std", 0)
        if std == float("inf"):
            magnitude = float(rng.uniform(0, magnitude))
        elif std > 0:
            magnitude = float(rng.normal(magnitude, std))
        upper_bound = self.hparams.get("magnitude_max") or LEVEL_DENOM
        return max(0.0, min(magnitude, upper_bound))

    def level_args(self, magnitude: float, rng: np.random.Generator) -> tuple:
        """The op's arguments at `magnitude` (drawing a random sign where timm does)."""
        level_fn = LEVEL_TO_ARG[self.name]
        return level_fn(magnitude, self.hparams, rng) if level_fn is not None else ()

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        if self.prob < 1.0 and rng.random() > self.prob:
            return img
        args = self.level_args(self.sample_magnitude(rng), rng)
        resample = _as_resample(self.hparams.get("interpolation", RANDOM_INTERPOLATION))
        if isinstance(resample, tuple) and self.name in GEOMETRIC_OPS:
            resample = resample[int(rng.integers(len(resample)))]
        fillcolor = tuple(self.hparams.get("img_mean", FILL))
        return NAME_TO_OP[self.name](img, *args, resample=resample, fillcolor=fillcolor)


@dataclass(frozen=True)
class RandAugment:
    """Apply `num_layers` ops chosen per image: uniformly *with* replacement, or (when `choice_weights` is set)
    weighted without replacement -- timm's `RandAugment.__call__`. PIL image in, PIL image out."""

    ops: tuple[AugmentOp, ...]
    num_layers: int = 2
    choice_weights: tuple[float, ...] | None = None

    def choose(self, rng: np.random.Generator) -> list[int]:
        """Indices into `ops` for one image, in application order."""
        p = None if self.choice_weights is None else np.asarray(self.choice_weights)
        idx = rng.choice(len(self.ops), self.num_layers, replace=p is None, p=p)
        return [int(i) for i in idx]

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        for i in self.choose(rng):
            img = self.ops[i](img, rng)
        return img


def rand_augment_choices(name: str, increasing: bool = True) -> Sequence[str] | Mapping[str, float]:
    """timm's named op sets for the `t` config key: 'weights', '3aw' (weighted), '3a', else the RA sets."""
    sets = {"weights": RAND_WEIGHTED_0, "3aw": RAND_WEIGHTED_3A, "3a": RAND_3A}
    return sets.get(name, RAND_INCREASING_TRANSFORMS if increasing else RAND_TRANSFORMS)


def _parse_config(config_str: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """Config-string sections -> {magnitude, num_layers, increasing, prob, transforms}; mstd/mmax go to hparams."""
    sections = config_str.split("-")
    if sections[0] != "rand":
        raise ValueError(f"RandAugment config must start with 'rand': {config_str!r}")
    out: dict[str, Any] = {"magnitude": LEVEL_DENOM, "num_layers": 2, "increasing": False, "prob": 0.5}
    for section in sections[1:]:
        if section.startswith("t"):
            out.setdefault("transforms", section[1:])
            continue
        parts = re.split(r"(\d.*)", section)
        if len(parts) < 2:
            continue  # timm skips sections without a number
        key, val = parts[:2]
        if key == "mstd":
            mstd = float(val)
            hparams.setdefault("magnitude_std", float("inf") if mstd > 100 else mstd)
        elif key == "mmax":
            hparams.setdefault("magnitude_max", int(val))
        elif key == "inc":
            out["increasing"] = bool(int(val))
        elif key == "m":
            out["magnitude"] = int(val)
        elif key == "n":
            out["num_layers"] = int(val)
        elif key == "p":
            out["prob"] = float(val)
        else:
            raise ValueError(f"unknown RandAugment config section {section!r} in {config_str!r}")
    return out


def rand_augment_transform(
    config_str: str,
    hparams: Mapping[str, Any] | None = None,
    transforms: str | Sequence[str] | Mapping[str, float] | None = None,
) -> RandAugment:
    """Build RandAugment from timm's config string, e.g. 'rand-m9-mstd0.5-inc1'.

    Sections after 'rand': `m` magnitude (int, default 10), `n` ops per image (2), `p` op probability (0.5),
    `mstd` magnitude noise std (> 100 means uniform), `mmax` magnitude clip, `inc` increasing op set (0/1),
    `t<name>` op set ('weights', '3a', '3aw'; the `transforms` argument wins). `hparams` values win over
    `mstd`/`mmax` from the string.
    """
    hparams = dict(hparams) if hparams else dict(HPARAMS_DEFAULT)
    cfg = _parse_config(config_str, hparams)
    if transforms is None:
        transforms = cfg.get("transforms")
    if isinstance(transforms, str):
        transforms = rand_augment_choices(transforms, increasing=cfg["increasing"])
    elif transforms is None:
        transforms = RAND_INCREASING_TRANSFORMS if cfg["increasing"] else RAND_TRANSFORMS
    weights = None
    if isinstance(transforms, Mapping):
        names, raw = zip(*transforms.items(), strict=True)
        weights = tuple(float(w) for w in np.asarray(raw, dtype=np.float64) / np.sum(raw))
        transforms = names
    ops = tuple(AugmentOp(name, prob=cfg["prob"], magnitude=cfg["magnitude"], hparams=hparams) for name in transforms)
    return RandAugment(ops, cfg["num_layers"], choice_weights=weights)
