"""timm's model names -> an untrained NNX MobileNetV2 with its pretrained_cfg (`mv2jax.models.load` puts weights
in it)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from mv2jax.models.mobilenetv2 import MobileNetV2, MobileNetV2Features, build_mobilenetv2
from mv2jax.models.registry import VARIANTS, pretrained_cfg_for, split_model_name
from mv2jax.weights import hub_config

HF_HUB_PREFIX = "hf-hub:"


def resolve_name(name: str) -> tuple[str, dict]:
    """(architecture, pretrained_cfg) for a timm-style name or an `hf-hub:` repo id."""
    if name.startswith(HF_HUB_PREFIX):
        repo_id = name[len(HF_HUB_PREFIX) :]
        config = hub_config(repo_id)
        architecture = config.get("architecture", "")
        if architecture not in VARIANTS:
            raise ValueError(f"Hub repo {repo_id} holds a {architecture!r}, which mv2jax does not implement")
        cfg = pretrained_cfg_for(architecture, "untrained") | dict(config.get("pretrained_cfg", {}))
        cfg.update(hf_hub_id=repo_id, num_classes=config.get("num_classes", cfg["num_classes"]))
        if "tag" not in config.get("pretrained_cfg", {}):  # weights that are not timm's published ones
            cfg.pop("tag")
        if config.get("label_names"):  # timm writes them beside pretrained_cfg and reads them into it
            cfg["label_names"] = tuple(config["label_names"])
        cfg["input_size"], cfg["mean"], cfg["std"] = (tuple(cfg[k]) for k in ("input_size", "mean", "std"))
        return architecture, cfg
    architecture, tag = split_model_name(name)
    return architecture, pretrained_cfg_for(architecture, tag)


def new_model(
    architecture: str,
    cfg: dict,
    *,
    num_classes: int,
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
) -> MobileNetV2 | MobileNetV2Features:
    """The freshly initialised network of `architecture` carrying `cfg` as its pretrained_cfg (in train mode,
    as timm's models start). Input NHWC `[B, H, W, in_chans]` float."""
    arch, _ = VARIANTS[architecture]
    model = build_mobilenetv2(
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
    return model


def weights_name(architecture: str, cfg: dict) -> str:
    """`architecture.tag` as timm names the weights (the architecture alone where the cfg has no tag)."""
    return f"{architecture}.{cfg['tag']}" if "tag" in cfg else architecture
