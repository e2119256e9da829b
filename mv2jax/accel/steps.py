"""train.py's train and eval steps for a device list, with nothing real in them: the state's shapes come from
`jax.eval_shape` (the model's own random initialisation is numpy on the host) and every argument is a
`jax.ShapeDtypeStruct` carrying the sharding train.py gives it (state replicated, batches split over the mesh's
`data` axis; the train step donates its state). Compile-only devices (`mv2jax.accel.targets`) can take them:
nothing is read and nothing is placed on a device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from mv2jax.train import run as train_run
from mv2jax.train.config import TrainConfig
from mv2jax.train.mesh import batch_sharding, create_mesh, num_data_devices, replicated
from mv2jax.train.state import create_train_state
from mv2jax.train.step import jit_eval_step, make_train_step

# The schedule's length does not change the compiled program (the lr is computed from the step inside it).
STEPS_PER_EPOCH = 1000
IMAGENET_CLASSES = 1000


@dataclasses.dataclass(frozen=True)
class Program:
    """A jitted step and the abstract arguments to trace it with."""

    name: str  # 'train' or 'eval'
    fn: Callable
    args: tuple[Any, ...]
    batch_per_device: int


@dataclasses.dataclass(frozen=True)
class Steps:
    """train.py's two programs on a mesh, and what they were built for."""

    train: Program
    eval: Program
    devices: int
    image_size: tuple[int, int, int]  # (C, H, W), timm's input_size
    num_classes: int


def offline_config(config: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """`config` with nothing to read (no weights, no checkpoint) and `--conv-impl auto` resolved for an
    accelerator ('xla'); and one note per flag so ignored."""
    notes, changes = [], {}
    for flag, dest, off, why in (
        ("--data-dir", "data_dir", None, "--num-classes stands in for the dataset"),
        ("--pretrained", "pretrained", False, "weights' values do not change the compiled program"),
        ("--initial-checkpoint", "initial_checkpoint", "", "weights' values do not change the compiled program"),
        ("--resume", "resume", "", "the state's shapes come from the configuration"),
    ):
        if getattr(config, dest):
            notes.append(f"{flag} ignored: --compile-only reads nothing ({why})")
            changes[dest] = off
    if config.conv_impl == "auto":  # what 'auto' picks on a GPU or TPU, whatever this host is
        changes["conv_impl"] = "xla"
    return dataclasses.replace(config, **changes), notes


def num_classes_of(config: TrainConfig) -> int:
    """--num-classes, else the demo dataset's 10 digits, else ImageNet's 1000."""
    if config.num_classes:
        return config.num_classes
    return 10 if config.dataset == "digits" else IMAGENET_CLASSES


def _abstract_state(config: TrainConfig, num_classes: int, tx) -> tuple[Any, Any, Any]:
    """(graphdef, state shapes, model) as train.py creates them. The model's random initialisation runs on the
    host (numpy, quick); the state built from it (optimizer, EMA) is traced by `jax.eval_shape`, not made."""
    model = train_run._create_model(config, num_classes).model
    box: dict[str, Any] = {}

    def build():
        graphdef, state = create_train_state(model, tx, use_ema=config.model_ema)
        box["graphdef"] = graphdef
        return state

    shapes = jax.eval_shape(build)
    return box["graphdef"], shapes, model


def _spec(shape: Sequence[int], dtype: Any, sharding: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def _batches(config: TrainConfig, mesh, image: tuple[int, int, int], num_classes: int) -> tuple[dict, dict]:
    """Abstract train and eval batches of the global sizes, as the loader (and mixup) hand them to the steps."""
    n = num_data_devices(mesh)
    data = batch_sharding(mesh)
    channels, height, width = image
    train_b, eval_b = config.batch_size * n, (config.validation_batch_size or config.batch_size) * n
    mixing = config.mixup > 0 or config.cutmix > 0 or bool(config.cutmix_minmax)
    train = {"image": _spec((train_b, height, width, channels), jnp.float32, data)}
    if mixing:  # train.py's mixup turns labels into soft targets before the step
        train["target"] = _spec((train_b, num_classes), jnp.float32, data)
    else:
        train["label"] = _spec((train_b,), jnp.int32, data)
    evaluation = {
        "image": _spec((eval_b, height, width, channels), jnp.float32, data),
        "label": _spec((eval_b,), jnp.int32, data),
        "mask": _spec((eval_b,), jnp.bool_, data),
    }
    return train, evaluation


def build_steps(config: TrainConfig, devices: Sequence[Any]) -> Steps:
    """train.py's train and eval steps for `config` (already `offline_config`) on a mesh over `devices`."""
    mesh = create_mesh(devices)
    n = num_data_devices(mesh)
    num_classes = num_classes_of(config)
    steps = config.steps_per_epoch or STEPS_PER_EPOCH
    quiet = lambda *_: None  # noqa: E731
    with train_run._user_errors("model"):
        tx, schedule, _ = train_run._optimizer(config, steps, config.batch_size * n, quiet, devices[0].platform)
        graphdef, state, model = _abstract_state(config, num_classes, tx)
    with train_run._user_errors("transforms"):
        data_config, _, _ = train_run._transforms(config, model)
    image = tuple(data_config["input_size"])
    rep = replicated(mesh)
    state = jax.tree.map(lambda s: _spec(s.shape, s.dtype, rep), state)
    train_batch, eval_batch = _batches(config, mesh, image, num_classes)
    train_fn = make_train_step(graphdef, tx, schedule, train_run._step_config(config, mesh, quiet), mesh)
    eval_fn = jit_eval_step(graphdef, mesh)
    eval_args = (state.params, state.batch_stats, eval_batch, state.rng_state)
    eval_per_device = config.validation_batch_size or config.batch_size
    return Steps(
        train=Program("train", train_fn, (state, train_batch), config.batch_size),
        eval=Program("eval", eval_fn, eval_args, eval_per_device),
        devices=n,
        image_size=image,
        num_classes=num_classes,
    )
