"""`create_model`: timm's names and arguments -> an NNX MobileNetV2, optionally with timm's weights."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mv2jax.convert.checkpoint import adapt_input_conv, hub_config, hub_weights, read_checkpoint
from mv2jax.convert.state_dict import timm_to_mv2jax
from mv2jax.models.mobilenetv2 import MobileNetV2
from mv2jax.models.registry import VARIANTS, pretrained_cfg_for, split_model_name

HF_HUB_PREFIX = "hf-hub:"
_HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.")


def _resolve_name(name: str) -> tuple[str, dict]:
    """(architecture, pretrained_cfg) for a timm-style name or an `hf-hub:` repo id."""
    if name.startswith(HF_HUB_PREFIX):
        repo_id = name[len(HF_HUB_PREFIX) :]
        config = hub_config(repo_id)
        architecture = config.get("architecture", "")
        if architecture not in VARIANTS:
            raise ValueError(f"Hub repo {repo_id} holds a {architecture!r}, which mv2jax does not implement")
        cfg = pretrained_cfg_for(architecture, "untrained") | dict(config.get("pretrained_cfg", {}))
        cfg.update(hf_hub_id=repo_id, num_classes=config.get("num_classes", cfg["num_classes"]))
        cfg["input_size"], cfg["mean"], cfg["std"] = (tuple(cfg[k]) for k in ("input_size", "mean", "std"))
        return architecture, cfg
    architecture, tag = split_model_name(name)
    return architecture, pretrained_cfg_for(architecture, tag)


def create_model(
    name: str,
    pretrained: bool = False,
    *,
    checkpoint_path: str | os.PathLike | None = None,
    num_classes: int | None = None,
    in_chans: int = 3,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    global_pool: str = "avg",
    dtype=None,
    param_dtype=None,
    conv_impl: str = "auto",
    seed: int = 0,
) -> MobileNetV2:
    """Build a MobileNetV2 variant by timm name (`mobilenetv2_100`, `mobilenetv2_100.ra_in1k`,
    `hf-hub:timm/mobilenetv2_100.ra_in1k`). Input NHWC `[B, H, W, in_chans]` float.

    `pretrained=True` loads the tag's weights from timm's Hub repo (through huggingface_hub's cache) or
    from `checkpoint_path`, adapting as timm does: a different `num_classes` re-initialises the classifier
    and `in_chans != 3` adapts the stem. `checkpoint_path` without `pretrained` loads strictly.
    Like a timm model, the result starts in train mode: call `.eval()` for inference.
    """
    architecture, cfg = _resolve_name(name)
    arch, _ = VARIANTS[architecture]
    pretrained_classes = cfg["num_classes"]
    num_classes = pretrained_classes if num_classes is None else num_classes
    model = MobileNetV2(
        arch,
        num_classes=num_classes,
        in_chans=in_chans,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
        global_pool=global_pool,
        features_only=features_only,
        out_indices=out_indices,
        conv_impl=conv_impl,
        dtype=dtype,
        param_dtype=param_dtype or jnp.float32,
        rngs=nnx.Rngs(params=seed, dropout=seed + 1),
    )
    if features_only:
        cfg = {k: v for k, v in cfg.items() if k not in ("num_classes", "classifier", "global_pool")}
    model.pretrained_cfg = nnx.static(cfg)
    model.default_cfg = model.pretrained_cfg
    model_name = f"{architecture}.{cfg['tag']}" if "tag" in cfg else architecture
    if pretrained:
        path = checkpoint_path or _hub_weights_for(cfg, model_name)
        _load_pretrained(model, path, pretrained_classes, in_chans, model_name)
    elif checkpoint_path is not None:
        timm_to_mv2jax(_drop_head(read_checkpoint(checkpoint_path), features_only), model, model_name=model_name)
    return model


def _hub_weights_for(cfg: dict, model_name: str) -> str:

    if not cfg.get("hf_hub_id"):
        raise ValueError(f"{model_name} has no pretrained weights: use pretrained=False or pass checkpoint_path=")
    return hub_weights(cfg["hf_hub_id"])


def _drop_head(state_dict: dict, features_only: bool) -> dict:
    """A features_only model has no head: drop its keys (as timm, which loads features models non-strictly)."""
    if not features_only:
        return state_dict
    return {k: v for k, v in state_dict.items() if not k.startswith(_HEAD_PREFIXES)}


def _load_pretrained(model: MobileNetV2, path, pretrained_classes: int, in_chans: int, model_name: str) -> None:
    """timm's `load_pretrained`: adapt the stem to `in_chans`, drop a classifier of another class count."""

    state_dict = _drop_head(read_checkpoint(path), model.features_only)
    if "conv_stem.weight" in state_dict:
        state_dict["conv_stem.weight"] = adapt_input_conv(in_chans, np.asarray(state_dict["conv_stem.weight"]))
    allow_missing: tuple[str, ...] = ()
    if not model.features_only and model.num_classes != pretrained_classes:
        state_dict.pop("classifier.weight", None)
        state_dict.pop("classifier.bias", None)
        allow_missing = ("classifier.weight", "classifier.bias")  # keeps its fresh init, as in timm
    timm_to_mv2jax(state_dict, model, model_name=model_name, allow_missing=allow_missing)
