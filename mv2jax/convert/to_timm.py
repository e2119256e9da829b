"""An mv2jax checkpoint -> timm weights: a safetensors file in torch layout (OIHW, [out, in], int64
`num_batches_tracked`) with timm's `config.json` beside it, so its directory loads as
`timm.create_model('local-dir:DIR', pretrained=True)` or can be pushed to the Hub. The config carries what the
checkpoint records: the preprocessing it was trained with, its class names (timm's `label_names`), and, for
weights that are not timm's published ones, no pretrained tag but a `description` naming their source."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from mv2jax.convert.files import refuse_existing, write_atomic, write_safetensors
from mv2jax.data import (
    DEFAULT_CROP_MODE,
    DEFAULT_CROP_PCT,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    with_trained_config,
)
from mv2jax.models import MobileNetV2, ModelMeta, load_model
from mv2jax.weights import mv2jax_to_timm

HF_CONFIG_NAME = "config.json"
# Keys timm's `save_config_for_hf` drops from a pretrained_cfg (`filter_pretrained_cfg(remove_source=True)`).
_SOURCE_KEYS = frozenset({"url", "file", "hf_hub_id", "hf_hub_filename", "source", "state_dict"})
_KEEP_NULL = frozenset({"pool_size", "first_conv", "classifier"})
_LABEL_KEYS = ("label_names", "label_descriptions", "label_offset")


def export_to_timm(
    source: Path,
    output: Path,
    *,
    name: str | None = None,
    use_ema: bool = False,
    overwrite: bool = False,
) -> tuple[MobileNetV2, Path]:
    """An mv2jax checkpoint (`source`) -> timm safetensors at `output` plus timm's config.json beside it.

    Returns (the mv2jax model that was exported, the safetensors path)."""
    output = Path(output).absolute()
    config_path = output.with_name(HF_CONFIG_NAME)
    refuse_existing([output, config_path], overwrite)
    loaded = load_model(name, checkpoint_path=Path(source), use_ema=use_ema)
    model = loaded.model.eval()
    output.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(output, mv2jax_to_timm(model))
    write_atomic(config_path, (json.dumps(timm_hf_config(model, loaded.meta), indent=2) + "\n").encode())
    return model, output


def load_mv2jax(path: Path, name: str | None = None, use_ema: bool = False) -> tuple[MobileNetV2, dict]:
    """An mv2jax checkpoint directory (or a timm file, with `name`) -> (model in eval mode, the directory's meta).

    `name` overrides the checkpoint's meta `model_name`; `use_ema` takes the `ema` weights."""
    loaded = load_model(name, checkpoint_path=path, use_ema=use_ema)
    return loaded.model.eval(), dict(loaded.meta.recorded)


def timm_hf_config(model: MobileNetV2, meta: ModelMeta | None = None) -> dict:
    """timm's config.json for the model's current head and stem, as `timm.models.save_for_hf` writes it for the
    same timm model (source fields dropped, preprocessing resolved for `in_chans`, `model_args` recorded), given
    `meta`'s trained data config as its `data_config` and `meta`'s class names as `label_names`. With `meta` of
    weights that are not timm's published ones, the tag goes and `description` names the weights' source."""
    chans, num_classes = model.in_chans, model.num_classes
    trained = meta.data_config if meta else None
    cfg = {
        k: v
        for k, v in with_trained_config(model.pretrained_cfg, trained).items()
        if k not in _SOURCE_KEYS and (v is not None or k in _KEEP_NULL)
    }
    if meta is not None and meta.pretrained_tag is None:
        cfg.pop("tag", None)
        cfg["description"] = f"{meta.architecture} weights from {meta.source}, not timm's published weights"
    cfg.update(
        input_size=(chans, *tuple(cfg.get("input_size", (3, 224, 224)))[1:]),
        interpolation=cfg.get("interpolation") or "bicubic",
        mean=_channel_stat(cfg.get("mean") or IMAGENET_DEFAULT_MEAN, chans),
        std=_channel_stat(cfg.get("std") or IMAGENET_DEFAULT_STD, chans),
        crop_pct=cfg.get("crop_pct") or DEFAULT_CROP_PCT,
        crop_mode=cfg.get("crop_mode") or DEFAULT_CROP_MODE,
    )
    cfg.update(fixed_input_size=False, first_conv="conv_stem", custom_load=False)
    if tuple(cfg["input_size"][1:]) != tuple(model.pretrained_cfg["input_size"][1:]):
        cfg["pool_size"] = None  # as timm: the published pool size no longer holds
    cfg.pop("label_offset", None)
    if num_classes != cfg.get("num_classes"):
        for key in _LABEL_KEYS:
            cfg.pop(key, None)
    cfg["num_classes"] = num_classes
    config = {"architecture": cfg.pop("architecture"), "num_classes": num_classes, "num_features": model.num_features}
    if model.global_pool:
        config["global_pool"] = model.global_pool
    if meta is not None and meta.class_names:
        config["label_names"] = list(meta.class_names)
    config["model_args"] = {"in_chans": chans, "num_classes": num_classes, "global_pool": model.global_pool}
    config["pretrained_cfg"] = cfg
    return config


def _channel_stat(value: Sequence[float], chans: int) -> tuple[float, ...]:
    """timm's rule: a mean/std that fits neither 1 nor `chans` channels becomes its average."""
    value = tuple(value)
    return value if len(value) in (1, chans) else (sum(value) / len(value),)
