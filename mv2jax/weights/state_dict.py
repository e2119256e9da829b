"""timm state dict <-> mv2jax model. A timm key is the model's flat NNX state path joined with dots; only
layouts differ: conv OIHW <-> HWIO, linear [out, in] <-> [in, out]."""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

_TORCH_ONLY = ("num_batches_tracked",)


class CheckpointMismatchError(ValueError):
    """A state dict that does not fit the model: every missing, unexpected and wrong-shaped key at once.
    `misfits`: that list alone (`2 wrong shapes (classifier.bias (1000,) vs model (3,), ...)`)."""

    def __init__(self, message: str, misfits: str = "") -> None:
        super().__init__(message)
        self.misfits = misfits


def model_variables(model: nnx.Module) -> dict[str, nnx.Variable]:
    """timm key -> the model's Param / BatchStat variable (RNG state and static attributes excluded), in
    attribute definition order, which is timm's state-dict order (NNX's own state is sorted by name)."""
    out: dict[str, nnx.Variable] = {}
    _collect(model, "", out)
    return out


def _collect(node, prefix: str, out: dict) -> None:
    if isinstance(node, (nnx.Param, nnx.BatchStat)):
        out[prefix[:-1]] = node
    elif isinstance(node, nnx.List):
        for i, child in enumerate(node):
            _collect(child, f"{prefix}{i}.", out)
    elif isinstance(node, nnx.Module):
        for name, child in vars(node).items():
            if not name.startswith("_"):
                _collect(child, f"{prefix}{name}.", out)


def to_timm_layout(key: str, array: np.ndarray) -> np.ndarray:
    """mv2jax layout -> timm layout for the tensor stored under `key`."""
    if array.ndim == 4:  # HWIO -> OIHW
        return np.ascontiguousarray(array.transpose(3, 2, 0, 1))
    if array.ndim == 2:  # [in, out] -> [out, in]
        return np.ascontiguousarray(array.T)
    return array


def from_timm_layout(key: str, array: np.ndarray) -> np.ndarray:
    """timm layout -> mv2jax layout for the tensor stored under `key`."""
    if array.ndim == 4:  # OIHW -> HWIO
        return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
    if array.ndim == 2:
        return np.ascontiguousarray(array.T)
    return array


def _timm_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def _short(keys: list[str], limit: int = 6) -> str:
    more = f", ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_state_dict(
    state_dict: Mapping[str, np.ndarray],
    model: nnx.Module,
    strict: bool = True,
    model_name: str | None = None,
    allow_missing: tuple[str, ...] = (),
) -> None:
    """Raise one CheckpointMismatchError listing every missing / unexpected / wrong-shaped key.

    As torch's `load_state_dict`, shapes are always checked and `strict=False` tolerates missing and
    unexpected keys. `num_batches_tracked` and the keys in `allow_missing` may be absent from the checkpoint."""
    variables = model_variables(model)
    wrong = [
        f"{k} {tuple(np.shape(v))} vs model {_timm_shape(np.shape(variables[k][...]))}"
        for k, v in state_dict.items()
        if k in variables and tuple(np.shape(v)) != _timm_shape(np.shape(variables[k][...]))
    ]
    missing = (
        [k for k in variables if k not in state_dict and not k.endswith(_TORCH_ONLY) and k not in allow_missing]
        if strict
        else []
    )
    unexpected = [k for k in state_dict if k not in variables] if strict else []
    if not (wrong or missing or unexpected):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_short(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_short(unexpected)})")
    if wrong:
        parts.append(f"{len(wrong)} wrong shapes ({_short(wrong, 3)})")
    name, misfits = model_name or type(model).__name__, "; ".join(parts)
    raise CheckpointMismatchError(
        f"checkpoint does not fit {name}: {misfits}. Is it from another variant or head? "
        "Create the model the checkpoint was saved from, or pass num_classes= to re-initialise the classifier.",
        misfits,
    )


def timm_to_mv2jax(
    state_dict: Mapping[str, np.ndarray],
    model: nnx.Module,
    strict: bool = True,
    model_name: str | None = None,
    allow_missing: tuple[str, ...] = (),
) -> nnx.Module:
    """Load a timm state dict (name -> array in torch layout; numpy, jax or torch CPU tensors) into `model`
    in place; returns the model. Keys absent from the checkpoint keep the model's values."""
    state_dict = {k: _to_numpy(v) for k, v in state_dict.items()}
    check_state_dict(state_dict, model, strict=strict, model_name=model_name, allow_missing=allow_missing)
    for key, var in model_variables(model).items():
        if key in state_dict:
            var[...] = jnp.asarray(from_timm_layout(key, state_dict[key]), dtype=var.dtype)
    return model


def mv2jax_to_timm(model: nnx.Module) -> dict[str, np.ndarray]:
    """The model's weights and BN statistics as a timm state dict of numpy arrays (torch layout; float32
    tensors, int64 `num_batches_tracked`) that `timm_model.load_state_dict(strict=True)` accepts."""
    out = {}
    for key, var in model_variables(model).items():
        array = np.array(var[...])  # a writable copy (torch.from_numpy warns on read-only arrays)
        if key.endswith(_TORCH_ONLY):
            array = array.astype(np.int64)
        out[key] = to_timm_layout(key, array)
    return out


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)
