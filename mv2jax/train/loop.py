"""The training program: timm train.py's epochs x steps over mv2jax's pure, jitted train and eval steps.

Per step: loader batch -> `shard_batch` -> [mixup] -> jitted train step (state donated). The finite check of step
`n` runs after step `n + 1` is dispatched (the device never waits for the host); a non-finite step raises
FloatingPointError before anything is saved, so the last checkpoint is always of a finite state.
Per epoch end: `dist_bn`, eval of the raw and the EMA weights on the eval split (every example exactly once),
an async checkpoint, then summary.csv / log.jsonl / curves.png (process 0).

Resume is exact: the loader's batches, the augmentation draws, dropout/drop-path keys and the mixup keys are all
functions of (seed, step), and the checkpoint holds the state at a step boundary plus the loader position.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

import mv2jax
from mv2jax.data import MixupConfig, create_dataset, create_loader, create_transform, mixup, resolve_data_config
from mv2jax.data.loader import Loader, LoaderIterator
from mv2jax.train.checkpoint import (
    CHECKPOINTS_DIR,
    PreemptionGuard,
    TrainCheckpointer,
    find_checkpoint,
    set_step,
)
from mv2jax.train.config import ConfigError, TrainConfig
from mv2jax.train.logging import RunLogger
from mv2jax.train.mesh import (
    batch_sharding,
    bn_stat_groups,
    create_mesh,
    dist_bn,
    initialize_distributed,
    num_data_devices,
    replicated,
    shard_batch,
    shard_train_state,
)
from mv2jax.train.optim import OPTIMIZERS, create_optimizer
from mv2jax.train.schedules import create_schedule, scale_lr, scheduled_epochs
from mv2jax.train.state import TrainState, create_train_state
from mv2jax.train.step import StepConfig, check_finite, make_eval_step, make_train_step

# Auto-resume refuses a checkpoint whose run differs in these (a different run landed in the same directory).
RESUME_IDENTITY = ("model", "dataset", "data_dir", "train_split", "batch_size", "seed", "img_size", "input_size",
                   "num_classes", "model_ema")
EVAL_KEYS = ("image", "label", "mask")


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything built once for a run (static for its whole length)."""

    config: TrainConfig
    mesh: Mesh
    graphdef: nnx.GraphDef
    train_step: Callable
    eval_step: Callable
    schedule: Callable[[int], float]
    mix_fn: Callable | None
    train_loader: Loader
    eval_loader: Loader
    steps_per_epoch: int
    num_epochs: int
    global_batch: int
    run_dir: Path
    model_meta: Mapping[str, Any]
    is_primary: bool

    def loader_position(self, step: int) -> int:
        """Loader step of global update `step` (with --steps-per-epoch, epoch e still reads epoch e's batches)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        return epoch * len(self.train_loader) + i

    def summary_lr(self, epoch: int) -> float:
        """The lr timm's train.py logs at the end of `epoch` (the optimizer's lr then, in float64): the next
        update's with --sched-on-updates (step_update already ran), else the one of the epoch's last update."""
        next_update = (epoch + 1) * self.steps_per_epoch
        return float(self.schedule(next_update if self.config.sched_on_updates else next_update - 1))

    def say(self, text: str) -> None:
        if self.is_primary:
            print(text, flush=True)


@dataclasses.dataclass(frozen=True)
class Start:
    """Where training starts: global update `step`, `epoch`, `epoch_step` updates into it, the loss sum so far in
    that epoch, the loader state to restore and where it came from (None for a fresh run)."""

    step: int = 0
    epoch: int = 0
    epoch_step: int = 0
    loss_sum: float = 0.0
    data_state: Mapping[str, Any] | None = None
    source: str | None = None
    meta: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """The outcome: the run directory, epochs and updates done, last raw/EMA eval metrics ({loss, top1, top5},
    top-1/top-5 in percent), the best checkpoint step, whether SIGTERM stopped it, wall time (s)."""

    run_dir: Path
    epochs_done: int
    step: int
    eval: dict | None = None
    eval_ema: dict | None = None
    best_step: int | None = None
    preempted: bool = False
    already_complete: bool = False
    wall_time: float = 0.0


# --- building the run ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _user_errors(what: str) -> Iterator[None]:
    """Errors caused by the configuration (a missing folder, an unknown model name, an unsupported augmentation)
    become one-line ConfigErrors naming what was being set up."""
    try:
        yield
    except (ValueError, FileNotFoundError, NotImplementedError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{what}: {e}") from e


def _datasets(config: TrainConfig) -> tuple[Any, Any]:
    kwargs = {}
    if config.dataset == "digits" and (config.input_size or config.img_size):
        kwargs["image_size"] = (config.input_size or (0, 0, config.img_size))[-1]
    train_ds = create_dataset(config.dataset, config.data_dir, config.train_split, **kwargs)
    eval_ds = create_dataset(config.dataset, config.data_dir, config.val_split, **kwargs)
    return train_ds, eval_ds


def _create_model(config: TrainConfig, num_classes: int) -> nnx.Module:
    in_chans = config.in_chans or (config.input_size[0] if config.input_size else 3)
    model = mv2jax.create_model(
        config.model, pretrained=config.pretrained, checkpoint_path=config.initial_checkpoint or None,
        num_classes=num_classes, in_chans=in_chans, drop_rate=config.drop, drop_path_rate=config.drop_path_rate,
        global_pool=config.gp or "avg", dtype=jnp.bfloat16 if config.amp else None, conv_impl=config.conv_impl,
        seed=config.seed)
    classifier = model.classifier
    if classifier is not None and config.head_init_scale is not None:  # timm train.py's --head-init-scale
        classifier.weight[...] = classifier.weight[...] * config.head_init_scale
        classifier.bias[...] = classifier.bias[...] * config.head_init_scale
    if classifier is not None and config.head_init_bias is not None:
        classifier.bias[...] = jnp.full_like(classifier.bias[...], config.head_init_bias)
    return model


def _transforms(config: TrainConfig, model: nnx.Module) -> tuple[dict, Callable, Callable]:
    """(data config, train transform `(img, rng)`, eval transform), as timm's train.py builds them."""
    args = {"input_size": config.input_size, "img_size": config.img_size, "in_chans": config.in_chans,
            "interpolation": config.interpolation, "mean": config.mean, "std": config.std,
            "crop_pct": config.crop_pct}
    data_config = resolve_data_config(model=model, args=args)
    train_tf = create_transform(
        data_config["input_size"], is_training=True, no_aug=config.no_aug, train_crop_mode=config.train_crop_mode,
        scale=config.scale, ratio=config.ratio, hflip=config.hflip, vflip=config.vflip,
        color_jitter=config.color_jitter, color_jitter_prob=config.color_jitter_prob,
        grayscale_prob=config.grayscale_prob or 0.0, gaussian_blur_prob=config.gaussian_blur_prob or 0.0,
        auto_augment=config.aa, interpolation=config.train_interpolation, mean=data_config["mean"],
        std=data_config["std"], re_prob=config.reprob, re_mode=config.remode, re_count=config.recount)
    eval_tf = create_transform(
        data_config["input_size"], is_training=False, interpolation=data_config["interpolation"],
        mean=data_config["mean"], std=data_config["std"], crop_pct=data_config["crop_pct"],
        crop_mode=data_config["crop_mode"])
    return data_config, train_tf, eval_tf


def _optimizer(config: TrainConfig, steps_per_epoch: int, global_batch: int, say: Callable) -> tuple:
    """(optax transform, lr schedule, number of epochs) as timm's create_optimizer_v2 / create_scheduler_v2."""
    info = OPTIMIZERS.get(config.opt.lower())
    if info is None:
        raise ConfigError(f"--opt {config.opt!r}: mv2jax implements {sorted(OPTIMIZERS)}")
    lr = config.lr
    if lr is None:
        lr = scale_lr(config.lr_base, config.lr_base_size, global_batch, config.lr_base_scale, config.opt)
        say(f"Learning rate ({lr}) calculated from base learning rate ({config.lr_base}) and effective global "
            f"batch size ({global_batch}).")
    sched_args = dict(epochs=config.epochs, steps_per_epoch=steps_per_epoch, warmup_epochs=config.warmup_epochs,
                      warmup_prefix=config.warmup_prefix, cooldown_epochs=config.cooldown_epochs,
                      sched_on_updates=config.sched_on_updates)
    schedule = create_schedule(config.sched, lr=lr, warmup_lr=config.warmup_lr, decay_epochs=config.decay_epochs,
                               decay_rate=config.decay_rate, min_lr=config.min_lr, **sched_args)
    tx = create_optimizer(
        config.opt, schedule, weight_decay=config.weight_decay,
        momentum=config.momentum if info.has_momentum else None, eps=config.opt_eps if info.has_eps else None,
        betas=config.opt_betas, clip_grad=config.clip_grad, clip_mode=config.clip_mode)
    return tx, schedule, scheduled_epochs(config.sched, **sched_args)


def _make_mix_fn(config: TrainConfig, num_classes: int, mesh: Mesh) -> Callable | None:
    """Jitted timm Mixup/CutMix over the global batch, keyed by (seed, update), or None when off."""
    if not (config.mixup > 0 or config.cutmix > 0 or config.cutmix_minmax):
        return None
    cfg = MixupConfig(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, cutmix_minmax=config.cutmix_minmax,
                      prob=config.mixup_prob, switch_prob=config.mixup_switch_prob, mode=config.mixup_mode,
                      label_smoothing=config.smoothing, num_classes=num_classes)

    def mix(images, labels, step, enabled):
        key = jax.random.fold_in(jax.random.key(config.seed), step)
        mixed, target = mixup(key, images, labels, cfg, enabled)
        return {"image": mixed, "target": target}

    data, rep = batch_sharding(mesh), replicated(mesh)
    return jax.jit(mix, in_shardings=(data, data, rep, rep), out_shardings=data)


def build_run(config: TrainConfig) -> tuple[Run, TrainState]:
    """Datasets, model, optimizer, jitted steps and loaders for `config`; and the fresh (sharded) train state."""
    is_primary = jax.process_index() == 0
    with _user_errors("dataset"):
        train_ds, eval_ds = _datasets(config)
    num_classes = config.num_classes or train_ds.num_classes
    if num_classes < train_ds.num_classes:
        raise ConfigError(f"--num-classes {num_classes} < the {train_ds.num_classes} classes of the dataset")
    with _user_errors("model"):
        model = _create_model(config, num_classes)
    with _user_errors("transforms"):
        data_config, train_tf, eval_tf = _transforms(config, model)
    mesh = create_mesh()
    devices = num_data_devices(mesh)
    global_batch = config.batch_size * devices
    eval_batch = (config.validation_batch_size or config.batch_size) * devices
    workers = dict(seed=config.seed, num_workers=config.workers)
    train_loader = create_loader(train_ds, train_tf, batch_size=global_batch, is_training=True, **workers)
    eval_loader = create_loader(eval_ds, eval_tf, batch_size=eval_batch, is_training=False, **workers)
    steps_per_epoch = min(len(train_loader), config.steps_per_epoch or len(train_loader))
    say = print if is_primary else (lambda *_: None)
    tx, schedule, num_epochs = _optimizer(config, steps_per_epoch, global_batch, say)
    graphdef, state = create_train_state(model, tx, use_ema=config.model_ema)
    stat_groups = bn_stat_groups(mesh, config.sync_bn)
    dist_bn(state, config.dist_bn, stat_groups)  # raises now for a mode mv2jax cannot do, not after an epoch
    step_config = StepConfig(label_smoothing=config.smoothing, ema_decay=config.model_ema_decay,
                             ema_warmup=config.model_ema_warmup, bn_stat_groups=stat_groups)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    say(f"Model {config.model} created, param count: {n_params}; {len(train_ds)} train / {len(eval_ds)} eval "
        f"images, {num_classes} classes, input {tuple(data_config['input_size'])}; {devices} device(s) x "
        f"{config.batch_size} = global batch {global_batch}, {steps_per_epoch} steps/epoch, {num_epochs} epochs")
    run = Run(
        config=config, mesh=mesh, graphdef=graphdef,
        train_step=make_train_step(graphdef, tx, schedule, step_config, mesh), schedule=schedule,
        eval_step=make_eval_step(graphdef, state.rng_state, mesh),
        mix_fn=_make_mix_fn(config, num_classes, mesh), train_loader=train_loader, eval_loader=eval_loader,
        steps_per_epoch=steps_per_epoch, num_epochs=num_epochs, global_batch=global_batch,
        run_dir=config.output_dir(data_config["input_size"][-1]),
        model_meta={"model_name": config.model, "global_pool": config.gp or "avg", "num_classes": num_classes,
                    "in_chans": data_config["input_size"][0], "data_config": data_config,
                    "mv2jax_version": mv2jax.__version__},
        is_primary=is_primary)
    return run, shard_train_state(state, mesh)


# --- resume -------------------------------------------------------------------------------------------------------

def _check_same_run(run: Run, meta: Mapping[str, Any]) -> None:
    saved, now = meta.get("config", {}), run.config.to_dict()
    diffs = [k for k in RESUME_IDENTITY if saved.get(k) != now[k]]
    if diffs:
        flags = ", ".join(f"--{k.replace('_', '-')} ({saved.get(k)!r} there, {now[k]!r} now)" for k in diffs)
        raise ConfigError(f"{run.run_dir} holds a checkpoint of another run: {flags}. Pass --experiment NAME or "
                          f"--output DIR for a new run, or --resume {run.run_dir} to load it anyway")


def resume(run: Run, state: TrainState, ckpt: TrainCheckpointer) -> tuple[TrainState, Start]:
    """The state to start from: `--resume PATH`, else the run directory's latest checkpoint, else `state`.
    `--start-epoch` overrides the epoch (and update count) either way, as in timm."""
    config, source, step = run.config, None, None
    if config.resume:
        root, step = find_checkpoint(config.resume)
        if step is None:
            raise ConfigError(f"--resume {config.resume}: no checkpoint there")
        source = ckpt if root == ckpt.directory else TrainCheckpointer(root, read_only=True, best_metric=None)
    elif (step := ckpt.latest_step()) is not None:
        source = ckpt
        _check_same_run(run, ckpt.read_meta(step))
    start = Start()
    if source is not None:
        restored = source.restore(step, state, restore_opt=not config.no_resume_opt)
        meta = restored.meta
        state = restored.state
        start = Start(step, meta["epoch"], meta.get("epoch_step", 0), meta.get("epoch_loss_sum", 0.0),
                      restored.data_state, f"{source.directory}/{step}", meta)
    if config.start_epoch is not None:
        start = dataclasses.replace(start, epoch=config.start_epoch, epoch_step=0, loss_sum=0.0)
    expected = start.epoch * run.steps_per_epoch + start.epoch_step
    if int(jax.device_get(state.step)) != expected:  # --start-epoch, or a changed --steps-per-epoch
        state = set_step(state, expected)
    return shard_train_state(state, run.mesh), dataclasses.replace(start, step=expected)


def _seek(run: Run, it: LoaderIterator, step: int) -> None:
    position = run.loader_position(step)
    if it.step != position:
        it.set_state(dict(it.get_state(), step=position))


def _restore_loader(run: Run, it: LoaderIterator, start: Start) -> None:
    if start.data_state:
        try:
            it.set_state(start.data_state)
        except (ValueError, KeyError) as e:  # e.g. --resume from a run on other data
            run.say(f"loader state not restored ({e}); starting the loader at update {start.step}")
    _seek(run, it, start.step)


# --- one epoch ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class EpochState:
    """Host-side bookkeeping of the current epoch."""

    epoch: int
    done: int  # updates finished in this epoch
    loss_sum: float
    lr: float = math.nan
    preempted: bool = False


def _device_batch(run: Run, batch: Mapping[str, np.ndarray], step: int, mixing: bool) -> dict[str, jax.Array]:
    device_batch = shard_batch({"image": batch["image"], "label": batch["label"]}, run.mesh)
    if run.mix_fn is None:
        return device_batch
    return run.mix_fn(device_batch["image"], device_batch["label"], np.int32(step), np.bool_(mixing))


def _account(run: Run, logger: RunLogger, progress, ep: EpochState, step: int, metrics: Mapping) -> None:
    """Fetch a finished step's metrics: stop if non-finite, add up the loss, report on the log interval."""
    host = jax.device_get(metrics)
    check_finite(host, step)
    loss, ep.lr = float(host["loss"]), float(host["lr"])
    ep.loss_sum += loss
    ep.done += 1
    rate = progress.update(ep.done, loss, ep.lr)
    if rate is not None:
        logger.log({"kind": "step", "epoch": ep.epoch, "step": step + 1, "loss": loss, "lr": ep.lr,
                    "grad_norm": float(host["grad_norm"]), "param_norm": float(host["param_norm"]),
                    "img_per_s": rate})


def train_epoch(run: Run, state: TrainState, it: LoaderIterator, ep: EpochState, guard: PreemptionGuard,
                logger: RunLogger) -> TrainState:
    """Train from update `ep.done` of epoch `ep.epoch` to its end, or until a stop is requested."""
    config, spe = run.config, run.steps_per_epoch
    _seek(run, it, ep.epoch * spe + ep.done)
    mixing = not (config.mixup_off_epoch and ep.epoch >= config.mixup_off_epoch)
    progress = logger.progress(ep.epoch, spe, ep.done, run.global_batch)
    pending = None
    try:
        for i in range(ep.done, spe):
            step = ep.epoch * spe + i
            if guard.requested(step):
                ep.preempted = True
                break
            state, metrics = run.train_step(state, _device_batch(run, next(it), step, mixing))
            if pending is not None:
                _account(run, logger, progress, ep, *pending)
            pending = (step, metrics)
        if pending is not None:
            _account(run, logger, progress, ep, *pending)
    finally:
        progress.close()
    return state


# --- evaluation and epoch end -------------------------------------------------------------------------------------

def evaluate(run: Run, weights: list[tuple[Any, Any]]) -> list[dict[str, float]]:
    """timm's validate for each (params, batch_stats) in one pass over the eval split: {loss, top1, top5}
    (plain cross entropy; top-k in percent), every example counted exactly once."""
    totals: list[Any] = [None] * len(weights)
    it = iter(run.eval_loader)
    try:
        for batch in it:
            device_batch = shard_batch({k: batch[k] for k in EVAL_KEYS}, run.mesh)
            for j, (params, batch_stats) in enumerate(weights):
                m = run.eval_step(params, batch_stats, device_batch)
                totals[j] = m if totals[j] is None else jax.tree.map(jnp.add, totals[j], m)
    finally:
        it.close()
    results = []
    for t in jax.device_get(totals):
        n = float(t["count"])
        results.append({"loss": float(t["loss_sum"]) / n, "top1": 100.0 * float(t["top1"]) / n,
                        "top5": 100.0 * float(t["top5"]) / n})
    return results


def _meta(run: Run, ep: EpochState, epoch_done: bool, evals: Mapping[str, Any] | None = None) -> dict:
    """The checkpoint's JSON meta: the model (for read_checkpoint / convert_weights.py), config and progress."""
    return dict(run.model_meta, config=run.config.to_dict(), epoch=ep.epoch + 1 if epoch_done else ep.epoch,
                epoch_step=0 if epoch_done else ep.done, epoch_loss_sum=0.0 if epoch_done else ep.loss_sum,
                steps_per_epoch=run.steps_per_epoch, metrics=dict(evals or {}))


def finish_epoch(run: Run, state: TrainState, ep: EpochState, it: LoaderIterator, ckpt: TrainCheckpointer,
                 logger: RunLogger, seconds: float) -> tuple[TrainState, dict]:
    """timm's epoch end: dist_bn, eval raw + EMA, checkpoint (ranked by the EMA's metric when EMA is on), logs."""
    config = run.config
    state = dist_bn(state, config.dist_bn, bn_stat_groups(run.mesh, config.sync_bn))
    weights = [(state.params, state.batch_stats)]
    if state.ema is not None:
        weights.append((state.ema["params"], state.ema["batch_stats"]))
    evals = evaluate(run, weights)
    raw, ema = evals[0], (evals[1] if len(evals) > 1 else None)
    ranked = ema or raw
    ckpt.save(state, meta=_meta(run, ep, True, {"eval": raw, "eval_ema": ema}), data_state=it.get_state(),
              metrics=ranked)
    record = {"epoch": ep.epoch, "step": (ep.epoch + 1) * run.steps_per_epoch, "train_loss": ep.loss_sum / ep.done,
              "lr": run.summary_lr(ep.epoch), "eval": raw, "eval_ema": ema, "epoch_time": seconds,
              "img_per_s": ep.done * run.global_batch / seconds}
    logger.epoch_end(record, ranked, last=ep.epoch + 1 == run.num_epochs)
    ema_text = f" | EMA top1 {ema['top1']:.2f} top5 {ema['top5']:.2f} loss {ema['loss']:.4f}" if ema else ""
    run.say(f"Epoch {ep.epoch}: train_loss {record['train_loss']:.4f} | eval top1 {raw['top1']:.2f} top5 "
            f"{raw['top5']:.2f} loss {raw['loss']:.4f}{ema_text} | lr {record['lr']:.3e} | {seconds:.1f} s")
    return state, record


# --- the whole run ------------------------------------------------------------------------------------------------

def _open_checkpointer(run: Run) -> TrainCheckpointer:
    metric = run.config.eval_metric
    return TrainCheckpointer(run.run_dir / CHECKPOINTS_DIR, keep_last=run.config.checkpoint_hist,
                             best_metric=metric, higher_is_better=metric != "loss")


def _complete_result(run: Run, start: Start, ckpt: TrainCheckpointer, t0: float) -> TrainResult:
    evals = (start.meta or {}).get("metrics", {})
    run.say(f"Training already complete: {start.epoch} epochs in {run.run_dir} (pass --experiment NAME or "
            "--output DIR for a new run, or raise --epochs to train on)")
    return TrainResult(run.run_dir, start.epoch, start.step, evals.get("eval"), evals.get("eval_ema"),
                       ckpt.best_step(), already_complete=True, wall_time=time.perf_counter() - t0)


def _run_epochs(run: Run, state: TrainState, start: Start, it: LoaderIterator, ckpt: TrainCheckpointer,
                logger: RunLogger, guard: PreemptionGuard, t0: float) -> TrainResult:
    record: dict = {}
    ep = EpochState(start.epoch, start.epoch_step, start.loss_sum)
    for epoch in range(start.epoch, run.num_epochs):
        ep = EpochState(epoch, ep.done, ep.loss_sum) if epoch == start.epoch else EpochState(epoch, 0, 0.0)
        t_epoch = time.perf_counter()
        state = train_epoch(run, state, it, ep, guard, logger)
        if ep.preempted:
            ckpt.save(state, meta=_meta(run, ep, False), data_state=it.get_state())
            logger.plot()
            step = epoch * run.steps_per_epoch + ep.done
            return TrainResult(run.run_dir, epoch, step, record.get("eval"), record.get("eval_ema"),
                               preempted=True, wall_time=time.perf_counter() - t0)
        state, record = finish_epoch(run, state, ep, it, ckpt, logger, time.perf_counter() - t_epoch)
        if epoch + 1 < run.num_epochs and guard.requested((epoch + 1) * run.steps_per_epoch):
            logger.plot()
            return TrainResult(run.run_dir, epoch + 1, (epoch + 1) * run.steps_per_epoch, record["eval"],
                               record["eval_ema"], preempted=True, wall_time=time.perf_counter() - t0)
    ckpt.wait()
    return TrainResult(run.run_dir, run.num_epochs, run.num_epochs * run.steps_per_epoch, record.get("eval"),
                       record.get("eval_ema"), ckpt.best_step(), wall_time=time.perf_counter() - t0)


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) training for `config`. Raises FloatingPointError (one line) if a step is non-finite, after
    pending checkpoint saves completed; ConfigError for a configuration that cannot run."""
    t0 = time.perf_counter()
    if config.distributed:
        initialize_distributed(config.coordinator_address, config.num_processes, config.process_id)
    with PreemptionGuard(multi_process=config.distributed) as guard:  # before any loader thread or worker starts
        run, state = build_run(config)
        ckpt = _open_checkpointer(run)
        guard.manager = ckpt.manager
        it = iter(run.train_loader)
        try:
            state, start = resume(run, state, ckpt)
            if start.source:
                run.say(f"Resumed from {start.source} at epoch {start.epoch}, update {start.step}")
            run.say(f"Output: {run.run_dir}")
            if start.epoch >= run.num_epochs:
                return _complete_result(run, start, ckpt, t0)
            logger = RunLogger(run.run_dir, enabled=run.is_primary, log_interval=config.log_interval)
            logger.start(config.to_dict(), start.epoch, start.step)
            _restore_loader(run, it, start)
            return _run_epochs(run, state, start, it, ckpt, logger, guard, t0)
        except FloatingPointError as e:
            ckpt.wait()
            last = ckpt.latest_step()
            where = f"last checkpoint: {ckpt.directory / str(last)}" if last is not None else "no checkpoint saved"
            raise FloatingPointError(f"{e}; {where}") from None
        finally:
            it.close()
            ckpt.close()  # waits for async saves: the last good checkpoint is complete whatever happened
