"""The model to export or run, from the package's model sources: a model name with `--pretrained` (timm's Hub
weights through huggingface_hub's cache), a timm checkpoint file, or an mv2jax checkpoint directory (a train.py
step directory or a convert_weights.py output; `use_ema` takes its EMA weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mv2jax.data import resolve_data_config
from mv2jax.models import MobileNetV2
from mv2jax.models import load_model as load_source


def load_model(
    name: str | None, *, pretrained: bool = False, checkpoint: str | Path | None = None, use_ema: bool = False
) -> MobileNetV2:
    """The model in eval mode. Exactly one of `pretrained` and `checkpoint`; a checkpoint file needs `name`, a
    checkpoint directory names its own model (`name` overrides it). ValueError/OSError in one line otherwise."""
    if pretrained == bool(checkpoint):
        raise ValueError("pass exactly one of --pretrained (with --model NAME) and --checkpoint PATH")
    return load_source(name, pretrained=pretrained, checkpoint_path=checkpoint or None, use_ema=use_ema).model.eval()


def model_name(model: MobileNetV2) -> str:
    """`architecture.tag` as timm names the weights (the architecture alone for untrained weights)."""
    cfg = model.pretrained_cfg
    return f"{cfg['architecture']}.{cfg['tag']}" if cfg.get("tag") else cfg["architecture"]


def data_config(model: MobileNetV2, img_size: int | None = None) -> dict[str, Any]:
    """timm's eval preprocessing for the model (`resolve_data_config`), at `img_size` when given."""
    if img_size is not None and img_size < 32:
        raise ValueError(f"--img-size {img_size} is below MobileNetV2's minimum of 32 (its output stride)")
    return resolve_data_config(model, img_size=img_size)
