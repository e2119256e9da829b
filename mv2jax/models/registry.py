"""Model names and pretrained configs as timm names them (`mobilenetv2_100`, `mobilenetv2_100.ra_in1k`).

The registry is built once from constant data; nothing edits it at import or run time.
"""

from __future__ import annotations

import fnmatch
from types import MappingProxyType

from mv2jax.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from mv2jax.models.arch import ArchConfig

_WEIGHTS_URL = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"

# name -> (architecture, tags in timm's order: the first is the default).
VARIANTS = MappingProxyType(
    {
        "mobilenetv2_035": (ArchConfig(0.35), ("untrained",)),
        "mobilenetv2_050": (ArchConfig(0.5), ("lamb_in1k",)),
        "mobilenetv2_075": (ArchConfig(0.75), ("untrained",)),
        "mobilenetv2_100": (ArchConfig(1.0), ("ra_in1k",)),
        "mobilenetv2_110d": (ArchConfig(1.1, 1.2, fix_stem_head=True), ("ra_in1k",)),
        "mobilenetv2_120d": (ArchConfig(1.2, 1.4, fix_stem_head=True), ("ra_in1k",)),
        "mobilenetv2_140": (ArchConfig(1.4), ("ra_in1k",)),
    }
)
# Original release files of the pretrained tags (timm's `url`); the Hub (`timm/<name>.<tag>`) is what we load.
_URLS = MappingProxyType(
    {
        "mobilenetv2_050.lamb_in1k": "mobilenetv2_050-3d30d450.pth",
        "mobilenetv2_100.ra_in1k": "mobilenetv2_100_ra-b33bc2c4.pth",
        "mobilenetv2_110d.ra_in1k": "mobilenetv2_110d_ra-77090ade.pth",
        "mobilenetv2_120d.ra_in1k": "mobilenetv2_120d_ra-5987e2ed.pth",
        "mobilenetv2_140.ra_in1k": "mobilenetv2_140_ra-21a4e913.pth",
    }
)


def pretrained_cfg_for(architecture: str, tag: str) -> dict:
    """timm's pretrained_cfg dict for `architecture.tag` (preprocessing and head facts)."""
    full = f"{architecture}.{tag}"
    cfg = {
        "url": _WEIGHTS_URL + _URLS[full] if full in _URLS else "",
        "architecture": architecture,
        "tag": tag,
        "custom_load": False,
        "input_size": (3, 224, 224),
        "fixed_input_size": False,
        "interpolation": "bicubic",
        "crop_pct": 0.875,
        "crop_mode": "center",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "num_classes": 1000,
        "pool_size": (7, 7),
        "first_conv": "conv_stem",
        "classifier": "classifier",
        "license": "apache-2.0",
    }
    if full in _URLS:
        cfg = {"url": cfg.pop("url"), "hf_hub_id": f"timm/{full}", **cfg}
    return cfg


def has_weights(architecture: str, tag: str) -> bool:
    return f"{architecture}.{tag}" in _URLS


def split_model_name(name: str) -> tuple[str, str]:
    """'mobilenetv2_100.ra_in1k' -> ('mobilenetv2_100', 'ra_in1k'); a bare name gets its default tag.

    Raises ValueError naming the known models for an unknown name or tag."""
    architecture, _, tag = name.partition(".")
    if architecture not in VARIANTS:
        raise ValueError(f"unknown model {name!r}: mv2jax has {', '.join(VARIANTS)} (see mv2jax.list_models())")
    tags = VARIANTS[architecture][1]
    tag = tag or tags[0]
    if tag not in tags:
        raise ValueError(f"unknown tag {tag!r} for {architecture}: available {', '.join(tags)}")
    return architecture, tag


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Names matching a glob pattern, as timm's list_models; with `pretrained=True`, `name.tag` for each tag
    that has weights (a pattern without a tag part then matches the name before the tag too)."""
    if not pretrained:
        return sorted(n for n in VARIANTS if fnmatch.fnmatch(n, pattern))
    patterns = [pattern] if "." in pattern else [pattern, f"{pattern}.*"]
    names = [f"{a}.{t}" for a, (_, tags) in VARIANTS.items() for t in tags if has_weights(a, t)]
    return sorted(n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns))
