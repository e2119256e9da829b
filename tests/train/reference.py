"""Shared pieces of the train-step tests: timm's training iteration (train.py's order of optimizer, EMA and
scheduler calls, with DDP emulated by replicas), the same run through mv2jax's jitted step, a tiny test-only
MobileNetV2 (3 stages, fast to compile) built identically on both sides, and relative errors.

Imported by the tests and by the subprocess scripts (which run with their own XLA_FLAGS / processes).
"""

from __future__ import annotations

import copy
import dataclasses
from functools import partial

import numpy as np
import timm
import torch
from flax import nnx
from timm.loss import LabelSmoothingCrossEntropy
from timm.models._efficientnet_builder import decode_arch_def, round_channels
from timm.models.efficientnet import EfficientNet
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

from mv2jax.convert import mv2jax_to_timm, timm_to_mv2jax
from mv2jax.models.arch import ArchConfig
from mv2jax.models.mobilenetv2 import MobileNetV2
from mv2jax.train.optim import create_optimizer
from mv2jax.train.schedules import create_schedule

NUM_CLASSES = 10
TINY_STAGES = ("ds_r1_k3_s1_c16", "ir_r2_k3_s2_e6_c24", "ir_r1_k3_s2_e6_c32")
TINY_MULTIPLIER = 0.35


@dataclasses.dataclass(frozen=True)
class Recipe:
    """timm train.py flags of the compared runs (RA recipe's optimizer and EMA; a schedule that changes the lr
    at every update: warmup over 2 updates, then a step decay per update)."""

    lr: float = 0.01
    weight_decay: float = 1e-5
    opt_eps: float = 1e-3
    momentum: float = 0.9
    smoothing: float = 0.1
    sched: str = "step"
    epochs: int = 10
    updates_per_epoch: int = 2
    warmup_epochs: int = 1
    warmup_lr: float = 1e-3
    decay_epochs: float = 0.5
    decay_rate: float = 0.7
    ema_decay: float = 0.9999
    ema_warmup: bool = True

    def timm_scheduler(self, optimizer):
        sched, _ = create_scheduler_v2(
            optimizer, sched=self.sched, num_epochs=self.epochs, decay_epochs=self.decay_epochs,
            decay_rate=self.decay_rate, warmup_lr=self.warmup_lr, warmup_epochs=self.warmup_epochs,
            step_on_epochs=False, updates_per_epoch=self.updates_per_epoch)
        return sched

    def schedule(self):
        return create_schedule(
            self.sched, lr=self.lr, epochs=self.epochs, steps_per_epoch=self.updates_per_epoch,
            warmup_epochs=self.warmup_epochs, warmup_lr=self.warmup_lr, decay_epochs=self.decay_epochs,
            decay_rate=self.decay_rate, sched_on_updates=True)

    def optax(self, schedule):
        return create_optimizer('rmsproptf', schedule, weight_decay=self.weight_decay, eps=self.opt_eps,
                                momentum=self.momentum)


def make_batches(n: int, batch: int, size: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """`n` batches: `image` f32 [batch, size, size, 3] NHWC, `label` int32 [batch]."""
    rng = np.random.default_rng(seed)
    return [{"image": rng.standard_normal((batch, size, size, 3)).astype(np.float32),
             "label": rng.integers(0, NUM_CLASSES, batch).astype(np.int32)} for _ in range(n)]


def tiny_timm() -> torch.nn.Module:
    """timm's EfficientNet built as `_gen_mobilenet_v2` does, with the tiny arch (seeded random weights)."""
    torch.manual_seed(0)
    round_fn = partial(round_channels, multiplier=TINY_MULTIPLIER)
    return EfficientNet(
        block_args=decode_arch_def([[s] for s in TINY_STAGES]), num_features=max(1280, round_fn(1280)),
        stem_size=32, round_chs_fn=round_fn, norm_layer=torch.nn.BatchNorm2d, act_layer=torch.nn.ReLU6,
        num_classes=NUM_CLASSES)


def tiny_mv2jax(**kwargs) -> MobileNetV2:
    """The same tiny network in mv2jax (seeded; load timm's weights with `load_timm`)."""
    arch = ArchConfig(TINY_MULTIPLIER, stages=TINY_STAGES)
    return MobileNetV2(arch, num_classes=NUM_CLASSES, rngs=nnx.Rngs(params=0, dropout=1), **kwargs)


def timm_named(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=NUM_CLASSES)


def state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_timm(model: MobileNetV2, tmodel: torch.nn.Module) -> MobileNetV2:
    """`model` holding `tmodel`'s weights and buffers (strict)."""
    return timm_to_mv2jax(state_dict_numpy(tmodel), model)


def to_torch(image_nhwc: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image_nhwc.transpose(0, 3, 1, 2))).to(dtype)


def timm_train(tmodel: torch.nn.Module, batches, recipe: Recipe, dtype=torch.float64, replicas: int = 1):
    """timm train.py over `batches` (global batches) with `replicas` DDP ranks, each a copy of `tmodel` fed its
    contiguous slice; gradients averaged (DDP), one RMSpropTF + scheduler + ModelEmaV3 per rank, then
    `distribute_bn(reduce)` on model and EMA. Returns (model state dict, EMA state dict) as numpy."""
    ranks = [copy.deepcopy(tmodel).to(dtype).train() for _ in range(replicas)]
    opts = [create_optimizer_v2(m, "rmsproptf", lr=recipe.lr, weight_decay=recipe.weight_decay,
                                eps=recipe.opt_eps, momentum=recipe.momentum) for m in ranks]
    scheds = [recipe.timm_scheduler(o) for o in opts]
    emas = [ModelEmaV3(m, decay=recipe.ema_decay, use_warmup=recipe.ema_warmup) for m in ranks]
    loss_fn = LabelSmoothingCrossEntropy(recipe.smoothing)
    num_updates = 0
    for batch in batches:
        images = to_torch(batch["image"], dtype).chunk(replicas)
        labels = torch.from_numpy(batch["label"].astype(np.int64)).chunk(replicas)
        for m, o, x, y in zip(ranks, opts, images, labels, strict=True):
            o.zero_grad()
            loss_fn(m(x), y).backward()
        _all_reduce_mean([[p.grad for p in m.parameters()] for m in ranks])
        for o in opts:
            o.step()
        num_updates += 1
        for m, e, s in zip(ranks, emas, scheds, strict=True):
            e.update(m, step=num_updates)
            s.step_update(num_updates=num_updates)
    _all_reduce_mean([_bn_buffers(m) for m in ranks])
    _all_reduce_mean([_bn_buffers(e.module) for e in emas])
    return state_dict_numpy(ranks[0]), state_dict_numpy(emas[0].module)


def _bn_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b for n, b in model.named_buffers() if "running_mean" in n or "running_var" in n]


@torch.no_grad()
def _all_reduce_mean(per_rank: list[list[torch.Tensor]]) -> None:
    for tensors in zip(*per_rank, strict=True):
        mean = torch.stack(tensors).mean(0)
        for t in tensors:
            t.copy_(mean)


def mv2jax_state_dicts(graphdef, state) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(model, EMA) of a train state as timm state dicts."""
    from mv2jax.train.state import model_from_state

    return (mv2jax_to_timm(model_from_state(graphdef, state)),
            mv2jax_to_timm(model_from_state(graphdef, state, use_ema=True)))


def rel_errors(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, float]:
    """Per key max|a - b| / max|b| (float64; the absolute error where b is all zeros)."""
    assert set(ours) == set(ref), set(ours) ^ set(ref)
    out = {}
    for k, b in ref.items():
        a, b = np.asarray(ours[k], np.float64), np.asarray(b, np.float64)
        scale = np.max(np.abs(b)) or 1.0
        out[k] = float(np.max(np.abs(a - b)) / scale)
    return out


def worst(errors: dict[str, float]) -> tuple[str, float]:
    key = max(errors, key=errors.get)
    return key, errors[key]


def mv2jax_train(model: MobileNetV2, batches, recipe: Recipe, *, bn_stat_groups: int = 1, mesh=None):
    """The same run through mv2jax's jitted step (on `mesh` if given: state replicated, batch on `data`).
    Returns (graphdef, final state, per-step metrics as numpy, the jitted step)."""
    import jax

    from mv2jax.train.mesh import shard_batch, shard_train_state
    from mv2jax.train.state import create_train_state
    from mv2jax.train.step import StepConfig, make_train_step

    schedule = recipe.schedule()
    tx = recipe.optax(schedule)
    graphdef, state = create_train_state(model, tx, use_ema=True)
    config = StepConfig(label_smoothing=recipe.smoothing, ema_decay=recipe.ema_decay, ema_warmup=recipe.ema_warmup,
                        bn_stat_groups=bn_stat_groups)
    step = make_train_step(graphdef, tx, schedule, config, mesh)
    if mesh is not None:
        state = shard_train_state(state, mesh)
    metrics = []
    for batch in batches:
        batch = shard_batch(batch, mesh) if mesh is not None else batch
        state, m = step(state, batch)
        metrics.append(jax.device_get(m))
    return graphdef, state, metrics, step
