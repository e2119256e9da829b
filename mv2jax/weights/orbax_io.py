"""mv2jax checkpoints: an orbax directory with a `state` tree (`model`, optionally `ema`: the NNX state as
nested dicts in mv2jax layout) and a JSON `meta` item (model name and creation arguments)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mv2jax.weights.state_dict import to_timm_layout

CHECKPOINTS_DIR = "checkpoints"  # where a train.py run directory keeps its step directories


def checkpoint_steps(path: str | os.PathLike) -> tuple[Path, int | None]:
    """(checkpoints directory, step) of a train.py step directory (`RUN/checkpoints/440`), a checkpoints directory
    or a run directory (its latest step). step is None when there is no checkpoint there."""
    path = Path(path).absolute()
    if path.name.isdigit() and (path / "meta").exists():
        return path.parent, int(path.name)
    root = path / CHECKPOINTS_DIR if (path / CHECKPOINTS_DIR).is_dir() else path
    steps = (
        sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / "meta").exists())
        if root.is_dir()
        else []
    )
    return root, (steps[-1] if steps else None)


def step_directory(path: str | os.PathLike) -> Path:
    """`path` itself, unless it is a train.py run or checkpoints directory: then its latest step directory."""
    path = Path(path)
    if (path / "state").is_dir():
        return path
    root, step = checkpoint_steps(path)
    return path if step is None else root / str(step)


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp, ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def flatten_tree(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict -> {'a.b.c': leaf}."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_tree(v, key + "."))
        else:
            out[key] = np.asarray(v)
    return out


def write_orbax_state(path: str | os.PathLike, state: dict, meta: dict) -> None:
    """Write `state` (a pytree of arrays) and `meta` (JSON-able) atomically: orbax writes a temporary
    directory and renames it when complete, so a crash never leaves a half-written checkpoint."""
    ocp, ckpt = _checkpointer()
    path = Path(path).absolute()
    ckpt.save(path, ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))


def local_restore_target(item_dir: str | os.PathLike) -> Any:
    """The restore target of an orbax array tree for this process alone: every array whole on the first local
    device, whatever mesh or number of processes saved it (without a target orbax insists on the saving
    topology: a checkpoint from a 2-host run would not load on one host)."""
    import jax
    import orbax.checkpoint as ocp

    # the item's handler reads an item directory as it is (a checkpointer would look for a checkpoint's own
    # metadata file there, and warn that it is missing)
    metadata = ocp.StandardCheckpointHandler().metadata(Path(item_dir).absolute())
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def leaf(m: Any) -> Any:
        if hasattr(m, "shape") and hasattr(m, "dtype"):
            return jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device)
        return m

    return jax.tree.map(leaf, metadata)


def read_orbax(path: str | os.PathLike) -> tuple[dict, dict]:
    """(state tree of arrays, meta dict) of an mv2jax checkpoint directory, saved by any number of processes."""
    ocp, ckpt = _checkpointer()
    path = Path(path).absolute()
    try:
        target = local_restore_target(path / "state")
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
        restored = ckpt.restore(path, args)
    except Exception as e:  # orbax raises several types for a foreign or partial directory
        raise ValueError(f"{path} is not an mv2jax (orbax) checkpoint directory ({type(e).__name__}: {e})") from e
    if "state" not in restored:
        raise ValueError(f"{path} is not an mv2jax (orbax) checkpoint directory (it has no 'state' item)")
    return restored["state"], dict(restored.get("meta") or {})


def read_orbax_weights(path: str | os.PathLike, use_ema: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """An mv2jax checkpoint directory -> (timm state dict in torch layout, its meta); the EMA weights with
    `use_ema`."""
    state, meta = read_orbax(path)
    key = "ema" if use_ema else "model"
    if key not in state:
        raise ValueError(f"{path} has no {key!r} weights (it has {', '.join(state)})")
    flat = flatten_tree(state[key])
    state_dict = {
        k: to_timm_layout(k, v.astype(np.int64) if k.endswith("num_batches_tracked") else v) for k, v in flat.items()
    }
    return state_dict, meta


def read_orbax_state_dict(path: str | os.PathLike, use_ema: bool = False) -> dict[str, np.ndarray]:
    """An mv2jax checkpoint directory -> timm state dict (torch layout); the EMA weights with `use_ema`."""
    return read_orbax_weights(path, use_ema)[0]
