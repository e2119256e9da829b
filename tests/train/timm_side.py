"""The timm side of the train-step tests: timm's training iteration driven in train.py's order (optimizer, EMA
and scheduler calls; DDP emulated by replicas), the tiny test network built with timm's own EfficientNet class,
and torch <-> numpy helpers.
"""

from __future__ import annotations

import copy
from functools import partial

import numpy as np
import timm
import torch
from timm.loss import LabelSmoothingCrossEntropy
from timm.models._efficientnet_builder import decode_arch_def, round_channels
from timm.models.efficientnet import EfficientNet
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

from mv2jax.convert import timm_to_mv2jax
from mv2jax.models.mobilenetv2 import MobileNetV2
from tests.train.reference import NUM_CLASSES, TINY_MULTIPLIER, TINY_STAGES, Recipe


def tiny_timm() -> torch.nn.Module:
    """timm's EfficientNet built as `_gen_mobilenet_v2` does, with the tiny arch (seeded random weights)."""
    torch.manual_seed(0)
    round_fn = partial(round_channels, multiplier=TINY_MULTIPLIER)
    return EfficientNet(
        block_args=decode_arch_def([[s] for s in TINY_STAGES]),
        num_features=max(1280, round_fn(1280)),
        stem_size=32,
        round_chs_fn=round_fn,
        norm_layer=torch.nn.BatchNorm2d,
        act_layer=torch.nn.ReLU6,
        num_classes=NUM_CLASSES,
    )


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


def timm_scheduler(recipe: Recipe, optimizer):
    """timm's scheduler for `recipe`, created as train.py does with `--sched-on-updates`."""
    sched, _ = create_scheduler_v2(
        optimizer,
        sched=recipe.sched,
        num_epochs=recipe.epochs,
        decay_epochs=recipe.decay_epochs,
        decay_rate=recipe.decay_rate,
        warmup_lr=recipe.warmup_lr,
        warmup_epochs=recipe.warmup_epochs,
        step_on_epochs=False,
        updates_per_epoch=recipe.updates_per_epoch,
    )
    return sched


def timm_train(
    tmodel: torch.nn.Module,
    batches,
    recipe: Recipe,
    dtype=torch.float64,
    replicas: int = 1,
    amp: bool = False,
    dist_bn: str = "reduce",
):
    """timm train.py over `batches` (global batches) with `replicas` DDP ranks, each a copy of `tmodel` fed its
    contiguous slice; gradients averaged (DDP), one RMSpropTF + scheduler + ModelEmaV3 per rank, and at the end
    of every epoch (`recipe.updates_per_epoch` updates) and of the run timm's `distribute_bn(dist_bn)` on model
    and EMA ('reduce': mean over ranks, 'broadcast': rank 0's, '': none). `amp`: forward and loss under bfloat16
    autocast (train.py's `--amp --amp-dtype bfloat16`). Returns (rank 0's model state dict, its EMA state dict,
    per-step lrs, per-step losses of rank 0) as numpy / floats."""
    ranks = [copy.deepcopy(tmodel).to(dtype).train() for _ in range(replicas)]
    opts = [
        create_optimizer_v2(
            m, "rmsproptf", lr=recipe.lr, weight_decay=recipe.weight_decay, eps=recipe.opt_eps, momentum=recipe.momentum
        )
        for m in ranks
    ]
    scheds = [timm_scheduler(recipe, o) for o in opts]
    emas = [ModelEmaV3(m, decay=recipe.ema_decay, use_warmup=recipe.ema_warmup) for m in ranks]
    loss_fn = LabelSmoothingCrossEntropy(recipe.smoothing)
    num_updates, lrs, losses = 0, [], []
    for batch in batches:
        images = to_torch(batch["image"], dtype).chunk(replicas)
        labels = torch.from_numpy(batch["label"].astype(np.int64)).chunk(replicas)
        for m, o, x, y in zip(ranks, opts, images, labels, strict=True):
            o.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(m(x), y)
            loss.backward()
        losses.append(loss.item())
        _all_reduce_mean([[p.grad for p in m.parameters()] for m in ranks])
        lrs.append(opts[0].param_groups[0]["lr"])
        for o in opts:
            o.step()
        num_updates += 1
        for m, e, s in zip(ranks, emas, scheds, strict=True):
            e.update(m, step=num_updates)
            s.step_update(num_updates=num_updates)
        if num_updates % recipe.updates_per_epoch == 0:
            _distribute_bn(ranks, emas, dist_bn)
    _distribute_bn(ranks, emas, dist_bn)
    return state_dict_numpy(ranks[0]), state_dict_numpy(emas[0].module), lrs, losses


def _distribute_bn(ranks: list[torch.nn.Module], emas: list[ModelEmaV3], mode: str) -> None:
    """timm's `distribute_bn(model, world_size, reduce=mode == 'reduce')` on the models, then on the EMAs."""
    if not mode:
        return
    sync = _all_reduce_mean if mode == "reduce" else _broadcast_first
    sync([_bn_buffers(m) for m in ranks])
    sync([_bn_buffers(e.module) for e in emas])


def _bn_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b for n, b in model.named_buffers() if "running_mean" in n or "running_var" in n]


@torch.no_grad()
def _all_reduce_mean(per_rank: list[list[torch.Tensor]]) -> None:
    for tensors in zip(*per_rank, strict=True):
        mean = torch.stack(tensors).mean(0)
        for t in tensors:
            t.copy_(mean)


@torch.no_grad()
def _broadcast_first(per_rank: list[list[torch.Tensor]]) -> None:
    for first, *others in zip(*per_rank, strict=True):
        for t in others:
            t.copy_(first)
