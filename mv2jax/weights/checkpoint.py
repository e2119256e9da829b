"""Reading checkpoints: .safetensors (numpy only), .pth/.bin/.pt (torch, optional extra) and mv2jax's orbax
directories, each as a timm state dict; and timm's stem adaptation to other input channels."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

TORCH_SUFFIXES = (".pth", ".bin", ".pt", ".pth.tar")
# Keys under which training scripts nest the weights (timm's `_load_checkpoint` order).
_NESTED_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")


def read_checkpoint(path: str | os.PathLike, use_ema: bool = False) -> dict[str, np.ndarray]:
    """A checkpoint file or directory -> timm state dict (name -> numpy array, torch layout).

    `.safetensors` needs only numpy; `.pth/.bin/.pt` need torch (`pip install mv2jax[torch]`); a directory
    is an mv2jax (orbax) checkpoint written by convert_weights.py or train.py. Training checkpoints holding
    a `state_dict`/`model` entry are unwrapped (the EMA entry with `use_ema`), and a `module.` prefix
    (DataParallel) is stripped."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        from mv2jax.weights.orbax_io import read_orbax_state_dict

        return read_orbax_state_dict(path, use_ema=use_ema)
    name = path.name.lower()
    if name.endswith(".safetensors"):
        return read_safetensors(path)
    if name.endswith(TORCH_SUFFIXES):
        return _read_torch(path, use_ema)
    raise ValueError(f"cannot read checkpoint {path}: expected .safetensors, .pth, .bin, .pt or an mv2jax directory")


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A safetensors file -> {name: numpy array} (numpy only); one clear error for a damaged file."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}); re-download or re-export it") from e


def _read_torch(path: Path, use_ema: bool) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading {path.name} needs torch: pip install 'mv2jax[torch]' (or use .safetensors)") from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise ValueError(f"{path} is not a readable torch checkpoint ({type(e).__name__}: {e})") from e
    keys = ("state_dict_ema", "model_ema") + _NESTED_KEYS if use_ema else _NESTED_KEYS
    if isinstance(obj, dict):
        for key in keys:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    out = {}
    for k, v in obj.items():
        if hasattr(v, "numpy"):
            v = v.float() if v.dtype == torch.bfloat16 else v
            out[k.removeprefix("module.")] = v.numpy()
    return out


def adapt_input_conv(in_chans: int, weight: np.ndarray) -> np.ndarray:
    """timm's `adapt_input_conv` for a 3-channel OIHW stem: sum for 1 channel, else repeat and rescale."""
    if in_chans == weight.shape[1]:
        return weight
    dtype = weight.dtype
    w = weight.astype(np.float32)
    if in_chans == 1:
        w = w.sum(axis=1, keepdims=True)
    else:
        if weight.shape[1] != 3:
            raise ValueError(f"cannot adapt a {weight.shape[1]}-channel stem to {in_chans} channels")
        repeat = int(math.ceil(in_chans / 3))
        w = np.tile(w, (1, repeat, 1, 1))[:, :in_chans] * (3 / float(in_chans))
    return w.astype(dtype)
