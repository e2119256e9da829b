"""The model to export or run, from the package's model sources: a model name with `--pretrained` (timm's Hub
weights through huggingface_hub's cache), a timm checkpoint file, or an mv2jax checkpoint directory (a train.py
step directory or a convert_weights.py output; `use_ema` takes its EMA weights)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mv2jax.cli import check_img_size
from mv2jax.data import resolve_data_config, with_trained_config
from mv2jax.data.imagenet import published_class_names
from mv2jax.models import LoadedModel, MobileNetV2, ModelMeta
from mv2jax.models import load_model as load_source


def load_model(
    name: str | None, *, pretrained: bool = False, checkpoint: str | Path | None = None, use_ema: bool = False
) -> LoadedModel:
    """The model in eval mode, with its metadata. Exactly one of `pretrained` and `checkpoint`; a checkpoint file
    needs `name`, a checkpoint directory names its own model (`name` overrides it). ValueError/OSError in one line
    otherwise."""
    if pretrained == bool(checkpoint):
        raise ValueError("pass exactly one of --pretrained (with --model NAME) and --checkpoint PATH")
    loaded = load_source(name, pretrained=pretrained, checkpoint_path=checkpoint or None, use_ema=use_ema)
    loaded.model.eval()
    return loaded


def model_name(meta: ModelMeta) -> str:
    """`architecture.tag` as timm names its published weights; the architecture alone for any other weights
    (`meta.source` says where those came from)."""
    return f"{meta.architecture}.{meta.pretrained_tag}" if meta.pretrained_tag else meta.architecture


def class_names(meta: ModelMeta) -> tuple[str, ...] | None:
    """One name per output: the recorded ones (a train.py checkpoint's, a Hub config's `label_names`), else
    ImageNet-1k's for timm's published ImageNet weights; None when unknown."""
    return meta.class_names or published_class_names(meta.pretrained_tag, meta.num_classes)


def data_config(
    model: MobileNetV2, img_size: int | None = None, trained: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """timm's eval preprocessing for the model (`resolve_data_config`): the data config it was `trained` with
    (a train.py checkpoint's `meta.data_config`) where there is one, else its pretrained_cfg's; at `img_size` when
    given."""
    check_img_size(img_size)
    return resolve_data_config(
        model, pretrained_cfg=with_trained_config(model.pretrained_cfg, trained), img_size=img_size
    )
