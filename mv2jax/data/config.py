"""Resolve a model's preprocessing config, with timm's keys, defaults and precedence.

Mirrors `timm.data.resolve_data_config`: explicit overrides win over the pretrained config, which wins over the
defaults below. The result is a plain dict with `input_size` (C, H, W), `interpolation`, `mean`, `std` (per
channel, for inputs scaled to [0, 1]), `crop_pct` and `crop_mode`; `create_eval_transform` builds the eval
transform from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mv2jax.constants import DEFAULT_CROP_MODE, DEFAULT_CROP_PCT, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")  # what resolving returns


def resolve_data_config(
    model: Any = None,
    *,
    pretrained_cfg: Mapping[str, Any] | None = None,
    args: Mapping[str, Any] | None = None,
    use_test_size: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Data config for `model` (anything with a timm-shaped `pretrained_cfg` dict), timm's rules.

    `args` and `overrides` play the role of timm's `args` dict (keys `in_chans`/`chans`, `input_size`, `img_size`,
    `interpolation`, `mean`, `std`, `crop_pct`, `crop_mode`; `overrides` win over `args`). `pretrained_cfg`, when
    given, replaces the model's. With nothing given, timm's defaults are returned (timm itself asserts instead).
    """
    args = {**(args or {}), **overrides}
    if not pretrained_cfg and model is not None:
        pretrained_cfg = getattr(model, "pretrained_cfg", None)
    cfg = dict(pretrained_cfg or {})

    in_chans = 3
    if args.get("in_chans") is not None:
        in_chans = args["in_chans"]
    elif args.get("chans") is not None:
        in_chans = args["chans"]
    input_size = _resolve_input_size(args, cfg, in_chans, use_test_size)
    if args.get("input_size") is not None:
        in_chans = input_size[0]  # as timm: only an explicit input_size overrides in_chans (for mean/std)

    crop_pct = DEFAULT_CROP_PCT
    if args.get("crop_pct"):
        crop_pct = args["crop_pct"]
    elif use_test_size and cfg.get("test_crop_pct"):
        crop_pct = cfg["test_crop_pct"]
    elif cfg.get("crop_pct"):
        crop_pct = cfg["crop_pct"]

    return {
        "input_size": input_size,
        "interpolation": args.get("interpolation") or cfg.get("interpolation") or "bicubic",
        "mean": _resolve_stat(args, cfg, "mean", IMAGENET_DEFAULT_MEAN, in_chans),
        "std": _resolve_stat(args, cfg, "std", IMAGENET_DEFAULT_STD, in_chans),
        "crop_pct": crop_pct,
        "crop_mode": args.get("crop_mode") or cfg.get("crop_mode") or DEFAULT_CROP_MODE,
    }


def with_trained_config(pretrained_cfg: Mapping[str, Any], data_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """`pretrained_cfg` with the data config a model was trained with (train.py's checkpoint meta `data_config`)
    over it, as `resolve_data_config(pretrained_cfg=...)` takes it: the trained preprocessing becomes the default,
    and the published weights' test-time size and crop no longer apply."""
    cfg = dict(pretrained_cfg)
    if data_config:
        for key in ("test_input_size", "test_crop_pct"):
            cfg.pop(key, None)
        cfg.update({k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items() if k in DATA_CONFIG_KEYS})
    return cfg


def _resolve_input_size(
    args: Mapping[str, Any], cfg: Mapping[str, Any], in_chans: int, use_test_size: bool
) -> tuple[int, int, int]:
    if args.get("input_size") is not None:
        input_size = tuple(args["input_size"])
        if len(input_size) != 3:
            raise ValueError(f"input_size must be (C, H, W), got {input_size}")
        return input_size
    if args.get("img_size") is not None:
        return (in_chans, int(args["img_size"]), int(args["img_size"]))
    if use_test_size and cfg.get("test_input_size") is not None:
        return tuple(cfg["test_input_size"])
    if cfg.get("input_size") is not None:
        return tuple(cfg["input_size"])
    return (in_chans, 224, 224)


def _resolve_stat(
    args: Mapping[str, Any], cfg: Mapping[str, Any], key: str, default: tuple[float, ...], in_chans: int
) -> tuple[float, ...]:
    """Per-channel mean/std: an override (a single value is repeated per channel), else the config, else default."""
    if args.get(key) is not None:
        value = tuple(args[key])
        if len(value) == 1:
            return value * in_chans
        if len(value) != in_chans:
            raise ValueError(f"{key} has {len(value)} values for {in_chans} channels")
        return value
    if cfg.get(key):
        return cfg[key]
    return default
