"""The yardstick for mv2jax's accelerator train step: a plain Flax Linen MobileNetV2 and its train step, written the
way flax's examples/imagenet writes a ResNet, with none of mv2jax's machinery (not part of the API).

The network: `nn.Conv` (depthwise ones with `feature_group_count`), PyTorch's symmetric padding, `nn.BatchNorm`,
relu6, residual adds, mean pooling, dropout and drop path (`nn.Dropout`), `nn.Dense`; the channel counts come from
`mv2jax.models.arch`, the one definition of the architecture. Mixed precision is autocast's policy, which mv2jax
follows too: convolutions and the classifier in the compute dtype, BatchNorm, activation and residual in float32.

The step: timm's RA recipe as optax composes it (add_decayed_weights + rmsprop with momentum, initial scale 1,
eps inside the sqrt, a warmup + step-decay schedule), label smoothing, a parameter and BatchNorm-statistics EMA.
BatchNorm statistics are per device, as mv2jax's per-device BatchNorm (no `--sync-bn`): the forward and backward
run in `shard_map` over the mesh's `data` axis, gradients and the running statistics are averaged over it
(`--dist-bn reduce`). Global batch, shardings and donation are train.py's: state replicated, batch split on `data`,
state donated.

Layouts: images NHWC, kernels HWIO (Flax's).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mv2jax.models.arch import ArchConfig, BlockSpec, build_block_specs, head_size, stem_size
from mv2jax.models.registry import VARIANTS

DATA = "data"
# timm's RA recipe for this family (see mv2jax.lowering.RA_FLAGS)
RA = {"lr": 0.048, "warmup_lr": 1e-6, "weight_decay": 1e-5, "eps": 1e-3, "smoothing": 0.1, "ema_decay": 0.9999}


def _pad(kernel: int, stride: int) -> tuple[tuple[int, int], tuple[int, int]]:
    p = ((stride - 1) + (kernel - 1)) // 2  # PyTorch-style symmetric padding, as timm's default
    return ((p, p), (p, p))


class Block(nn.Module):
    """timm's DepthwiseSeparableConv ('ds') or InvertedResidual ('ir') for one `BlockSpec`."""

    spec: BlockSpec
    conv: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]
    drop_path: float

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        s, shortcut = self.spec, x
        mid = s.mid_chs
        if s.block_type == "ir":
            x = jax.nn.relu6(self.norm()(self.conv(mid, (1, 1))(x)))
        k = s.kernel_size
        x = self.conv(mid, (k, k), (s.stride, s.stride), padding=_pad(k, s.stride), feature_group_count=mid)(x)
        x = jax.nn.relu6(self.norm()(x))
        x = self.norm()(self.conv(s.out_chs, (1, 1))(x))
        if not s.has_skip:
            return x
        if self.drop_path:
            x = nn.Dropout(self.drop_path, broadcast_dims=(1, 2, 3), deterministic=not train)(x)
        return x + shortcut


class MobileNetV2(nn.Module):
    """timm's MobileNetV2 for `arch`: stem, blocks, head conv, mean pool, dropout, classifier."""

    arch: ArchConfig
    num_classes: int = 1000
    drop_rate: float = 0.2
    drop_path_rate: float = 0.2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        conv = functools.partial(nn.Conv, use_bias=False, padding="VALID", dtype=self.dtype)
        # float32 BatchNorm (statistics, normalisation, output): the next convolution rounds its input
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=jnp.float32
        )
        x = conv(stem_size(self.arch), (3, 3), (2, 2), padding=_pad(3, 2))(x)
        x = jax.nn.relu6(norm()(x))
        for stage in build_block_specs(self.arch, self.drop_path_rate):
            for spec in stage:
                x = Block(spec, conv, norm, spec.drop_path_rate)(x, train)
        x = jax.nn.relu6(norm()(conv(head_size(self.arch), (1, 1))(x)))
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype)(x)


@dataclasses.dataclass(frozen=True)
class ReferenceStep:
    """The reference's jitted train step and its abstract arguments (`jax.ShapeDtypeStruct`s with shardings):
    `step.lower(*args)` or `step.trace(*args)` works without any device memory."""

    step: Callable
    args: tuple[Any, Any]


def _optimizer(params: Any, steps_per_epoch: int = 1000) -> optax.GradientTransformation:
    schedule = optax.join_schedules(
        [
            optax.linear_schedule(RA["warmup_lr"], RA["lr"], 3 * steps_per_epoch),
            optax.exponential_decay(RA["lr"], int(2.4 * steps_per_epoch), 0.97, staircase=True),
        ],
        [3 * steps_per_epoch],
    )
    decay_mask = jax.tree.map(lambda p: p.ndim > 1, params)
    return optax.chain(
        optax.add_decayed_weights(RA["weight_decay"], decay_mask),
        optax.rmsprop(schedule, decay=0.9, eps=RA["eps"], initial_scale=1.0, momentum=0.9),
    )


def _loss_and_grads(model: MobileNetV2, params, batch_stats, images, labels, rng):
    """Per device (inside `shard_map`): loss, gradients and new BatchNorm statistics, averaged over `data`."""
    rng = jax.random.fold_in(rng, jax.lax.axis_index(DATA))

    def loss_fn(p):
        logits, updates = model.apply(
            {"params": p, "batch_stats": batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": rng},
        )
        targets = optax.smooth_labels(jax.nn.one_hot(labels, model.num_classes), RA["smoothing"])
        loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()
        return loss, updates["batch_stats"]

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return jax.lax.pmean((loss, grads, new_stats), DATA)


def make_reference_step(
    mesh: Mesh,
    *,
    model: str = "mobilenetv2_100",
    batch_per_device: int = 128,
    img_size: int = 224,
    amp: bool = True,
    num_classes: int = 1000,
) -> ReferenceStep:
    """The reference train step for `model` (an mv2jax variant name) on `mesh`, global batch
    `batch_per_device` x the mesh's `data` size, images `[B, img_size, img_size, 3]` float32; `amp` computes in
    bfloat16."""
    net = MobileNetV2(VARIANTS[model][0], num_classes=num_classes, dtype=jnp.bfloat16 if amp else jnp.float32)
    image = jax.ShapeDtypeStruct((1, img_size, img_size, 3), jnp.float32)
    variables = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros(image.shape), train=False))
    tx = _optimizer(variables["params"])

    def init_state(rng):
        v = net.init(rng, jnp.zeros(image.shape), train=False)
        params, stats = v["params"], v["batch_stats"]
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "batch_stats": stats,
            "opt_state": tx.init(params),
            "ema": {"params": params, "batch_stats": stats},
            "rng": rng,
        }

    grads_fn = jax.shard_map(
        functools.partial(_loss_and_grads, net),
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec(DATA), PartitionSpec(DATA), PartitionSpec()),
        out_specs=PartitionSpec(),
    )

    def train_step(state, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])
        loss, grads, new_stats = grads_fn(state["params"], state["batch_stats"], batch["image"], batch["label"], rng)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new = {"params": params, "batch_stats": new_stats}
        ema = jax.tree.map(lambda e, p: RA["ema_decay"] * e + (1 - RA["ema_decay"]) * p, state["ema"], new)
        state = {**state, **new, "step": state["step"] + 1, "opt_state": opt_state, "ema": ema}
        return state, {"loss": loss}

    rep, data = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec(DATA))
    shapes = jax.eval_shape(init_state, jax.random.key(0))
    state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), shapes)
    batch_size = batch_per_device * mesh.shape[DATA]
    batch = {
        "image": jax.ShapeDtypeStruct((batch_size, img_size, img_size, 3), jnp.float32, sharding=data),
        "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=data),
    }
    step = jax.jit(train_step, in_shardings=(rep, data), out_shardings=rep, donate_argnums=0)
    return ReferenceStep(step, (state, batch))
