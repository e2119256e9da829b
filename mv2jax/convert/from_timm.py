"""timm weights -> an mv2jax checkpoint: an orbax directory (`write_orbax_state`) whose `state['model']` is the
model's Param + BatchStat state as nested dicts in mv2jax layout (conv HWIO, linear [in, out]), with a `meta`
recording the model name, head and stem sizes and where the weights came from."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from flax import nnx

import mv2jax
from mv2jax.convert.files import refuse_existing, replace, sha256_file, sibling
from mv2jax.models import MobileNetV2, load_model
from mv2jax.models.factory import HF_HUB_PREFIX
from mv2jax.models.registry import pretrained_cfg_for, split_model_name
from mv2jax.weights import hub_weights, read_checkpoint, write_orbax_state


def import_from_timm(
    name: str,
    output: Path,
    *,
    checkpoint: str | Path | None = None,
    use_ema: bool = False,
    overwrite: bool = False,
    converted_by: str = f"mv2jax {mv2jax.__version__}",
) -> tuple[dict[str, np.ndarray], Path]:
    """timm weights (`checkpoint`, or the Hub weights of model `name`) -> an mv2jax checkpoint at `output`.

    Returns (the timm state dict that was read, the checkpoint directory)."""
    output = Path(output)
    refuse_existing([output], overwrite)
    if checkpoint:
        source, repo = Path(checkpoint), None
    else:
        repo = hub_repo(name)
        try:
            source = Path(hub_weights(repo))
        except OSError as e:
            raise OSError(f"{e}; to this command pass it as --checkpoint FILE") from e
    state_dict = read_checkpoint(source, use_ema=use_ema)
    model = build_model(name, state_dict)
    meta = {
        "model_name": name,
        "architecture": model.pretrained_cfg["architecture"],
        "num_classes": model.num_classes,
        "in_chans": model.in_chans,
        "global_pool": model.global_pool,
        "source": str(source.absolute()),
        "source_sha256": sha256_file(source),
        "source_ema": use_ema,
        "converted_by": converted_by,
    }
    if repo:
        meta["source_hf_hub_id"] = repo
    write_checkpoint(output, model, meta, overwrite)
    return state_dict, output


def hub_repo(name: str) -> str:
    """The Hub repo holding the weights of a model name (raises ValueError for an unknown or untrained name)."""
    if name.startswith(HF_HUB_PREFIX):
        return name[len(HF_HUB_PREFIX) :]
    architecture, tag = split_model_name(name)
    repo = pretrained_cfg_for(architecture, tag).get("hf_hub_id")
    if not repo:
        raise ValueError(f"{architecture}.{tag} has no pretrained weights on the Hub: pass --checkpoint FILE")
    return repo


def build_model(name: str, state_dict: Mapping[str, np.ndarray], global_pool: str = "avg") -> MobileNetV2:
    """The mv2jax model `name`, with the class count and input channels the weights have, loaded strictly
    (CheckpointMismatchError for weights of another variant); in eval mode."""
    return load_model(name, state_dict=state_dict, global_pool=global_pool).model.eval()


def write_checkpoint(path: Path, model: MobileNetV2, meta: dict, overwrite: bool = False) -> None:
    """The model's Param + BatchStat state (mv2jax layout) and `meta` as an orbax checkpoint at `path`."""
    tree = {"model": nnx.to_pure_dict(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))}
    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        write_orbax_state(path, tree, meta)  # orbax writes a temporary directory and renames it when complete
        return
    tmp = sibling(path, "tmp")  # overwrite: write beside, then swap, so `path` is never half-written
    try:
        write_orbax_state(tmp, tree, meta)
        replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
