"""Building a training run from its configuration (datasets, model, transforms, mesh, optimizer and schedule,
mixup, jitted train/eval steps, loaders: the static `Run`), and resuming it (`--resume`, auto-resume from the run
directory, `--start-epoch`, the loader position).

Resume is exact: the loader's batches, the augmentation draws, dropout/drop-path keys and the mixup keys are all
functions of (seed, step), and the checkpoint holds the state at a step boundary plus the loader position.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

import mv2jax
from mv2jax.data import (
    MixupConfig,
    create_dataset,
    create_eval_transform,
    create_loader,
    create_transform,
    mixup,
    resolve_data_config,
)
from mv2jax.data.loader import Loader, LoaderIterator
from mv2jax.models import ClassifierMismatchError, LoadedModel, load_model
from mv2jax.train.checkpoint import TrainCheckpointer, find_checkpoint, set_step
from mv2jax.train.config import ConfigError, TrainConfig
from mv2jax.train.mesh import (
    batch_sharding,
    bn_stat_groups,
    create_mesh,
    dist_bn_running_stats,
    num_data_devices,
    replicated,
    shard_train_state,
)
from mv2jax.train.optim import OPTIMIZERS, create_optimizer, decay_groups, packs_on, relayout
from mv2jax.train.schedules import create_schedule, scale_lr, scheduled_epochs
from mv2jax.train.state import TrainState, create_train_state
from mv2jax.train.step import StepConfig, make_eval_step, make_train_step, stats_buffer_on

# Auto-resume refuses a checkpoint whose run differs in these (a different run landed in the same directory).
RESUME_IDENTITY = (
    "model",
    "dataset",
    "data_dir",
    "train_split",
    "batch_size",
    "seed",
    "img_size",
    "input_size",
    "num_classes",
    "model_ema",
)


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
    # The eval split numbers its folders by the train split's class names: a split missing a class keeps its labels.
    classes = dict(class_names=train_ds.class_names, classes_of="the train split's classes")
    eval_ds = create_dataset(config.dataset, config.data_dir, config.val_split, **classes, **kwargs)
    return train_ds, eval_ds


def _weights_source(config: TrainConfig) -> dict[str, Any]:
    """`load_model`'s source arguments for timm's flags: `--initial-checkpoint` loads strictly (it would replace
    every pretrained weight), `--pretrained --pretrained-path PATH` loads PATH with a new classifier (timm's
    `pretrained_cfg_overlay=dict(file=PATH, num_classes=-1)`), `--pretrained` alone timm's Hub weights."""
    if config.initial_checkpoint:
        return dict(checkpoint_path=config.initial_checkpoint)
    if config.pretrained and config.pretrained_path:
        return dict(pretrained=True, checkpoint_path=config.pretrained_path, new_classifier=True)
    return dict(pretrained=config.pretrained)


def _create_model(config: TrainConfig, num_classes: int) -> LoadedModel:
    in_chans = config.in_chans or (config.input_size[0] if config.input_size else 3)
    try:
        loaded = load_model(
            config.model,
            **_weights_source(config),
            num_classes=num_classes,
            in_chans=in_chans,
            drop_rate=config.drop,
            drop_path_rate=config.drop_path_rate,
            global_pool=config.gp or "avg",
            dtype=jnp.bfloat16 if config.amp else None,
            conv_impl=config.conv_impl,
            seed=config.seed,
        )
    except ClassifierMismatchError as e:
        path = config.initial_checkpoint
        raise ConfigError(
            f"--initial-checkpoint {path} is a strict load (as in timm) and its classifier has {e.checkpoint_classes} "
            f"classes, not the model's {e.model_classes} (--num-classes, default the dataset's): to fine-tune it with "
            f"a new classifier pass --pretrained --pretrained-path {path} instead"
        ) from None
    model = loaded.model
    classifier = model.classifier
    if classifier is not None and config.head_init_scale is not None:  # timm train.py's --head-init-scale
        classifier.weight[...] = classifier.weight[...] * config.head_init_scale
        classifier.bias[...] = classifier.bias[...] * config.head_init_scale
    if classifier is not None and config.head_init_bias is not None:
        classifier.bias[...] = jnp.full_like(classifier.bias[...], config.head_init_bias)
    return loaded


def _transforms(config: TrainConfig, model: nnx.Module) -> tuple[dict, Callable, Callable]:
    """(data config, train transform `(img, rng)`, eval transform), as timm's train.py builds them."""
    args = {
        "input_size": config.input_size,
        "img_size": config.img_size,
        "in_chans": config.in_chans,
        "interpolation": config.interpolation,
        "mean": config.mean,
        "std": config.std,
        "crop_pct": config.crop_pct,
    }
    data_config = resolve_data_config(model=model, args=args)
    train_tf = create_transform(
        data_config["input_size"],
        is_training=True,
        no_aug=config.no_aug,
        train_crop_mode=config.train_crop_mode,
        scale=config.scale,
        ratio=config.ratio,
        hflip=config.hflip,
        vflip=config.vflip,
        color_jitter=config.color_jitter,
        color_jitter_prob=config.color_jitter_prob,
        grayscale_prob=config.grayscale_prob or 0.0,
        gaussian_blur_prob=config.gaussian_blur_prob or 0.0,
        auto_augment=config.aa,
        interpolation=config.train_interpolation,
        mean=data_config["mean"],
        std=data_config["std"],
        re_prob=config.reprob,
        re_mode=config.remode,
        re_count=config.recount,
    )
    return data_config, train_tf, create_eval_transform(data_config)


def _packs(config: TrainConfig, platform: str) -> bool:
    """Whether the optimizer state is packed (`--opt-layout`; 'auto' by the step's platform)."""
    return packs_on(platform) if config.opt_layout == "auto" else config.opt_layout == "packed"


def _optimizer(
    config: TrainConfig, steps_per_epoch: int, global_batch: int, say: Callable, platform: str = "cpu"
) -> tuple:
    """(optax transform, lr schedule, number of epochs) as timm's create_optimizer_v2 / create_scheduler_v2, for a
    step compiled for `platform` (which optimizer-state layout, `packs_on`)."""
    info = OPTIMIZERS.get(config.opt.lower())
    if info is None:
        raise ConfigError(f"--opt {config.opt!r}: mv2jax implements {sorted(OPTIMIZERS)}")
    lr = config.lr
    if lr is None:
        lr = scale_lr(config.lr_base, config.lr_base_size, global_batch, config.lr_base_scale, config.opt)
        say(
            f"Learning rate ({lr}) calculated from base learning rate ({config.lr_base}) and effective global "
            f"batch size ({global_batch})."
        )
    sched_args = dict(
        epochs=config.epochs,
        steps_per_epoch=steps_per_epoch,
        warmup_epochs=config.warmup_epochs,
        warmup_prefix=config.warmup_prefix,
        cooldown_epochs=config.cooldown_epochs,
        sched_on_updates=config.sched_on_updates,
    )
    schedule = create_schedule(
        config.sched,
        lr=lr,
        warmup_lr=config.warmup_lr,
        decay_epochs=config.decay_epochs,
        decay_rate=config.decay_rate,
        min_lr=config.min_lr,
        **sched_args,
    )
    tx = create_optimizer(
        config.opt,
        schedule,
        weight_decay=config.weight_decay,
        momentum=config.momentum if info.has_momentum else None,
        eps=config.opt_eps if info.has_eps else None,
        betas=config.opt_betas,
        clip_grad=config.clip_grad,
        clip_mode=config.clip_mode,
        pack=_packs(config, platform),
    )
    return tx, schedule, scheduled_epochs(config.sched, **sched_args)


def _make_mix_fn(config: TrainConfig, num_classes: int, mesh: Mesh) -> Callable | None:
    """Jitted timm Mixup/CutMix over the global batch, keyed by (seed, update), or None when off."""
    if not (config.mixup > 0 or config.cutmix > 0 or config.cutmix_minmax):
        return None
    cfg = MixupConfig(
        mixup_alpha=config.mixup,
        cutmix_alpha=config.cutmix,
        cutmix_minmax=config.cutmix_minmax,
        prob=config.mixup_prob,
        switch_prob=config.mixup_switch_prob,
        mode=config.mixup_mode,
        label_smoothing=config.smoothing,
        num_classes=num_classes,
    )

    def mix(images, labels, step, enabled):
        key = jax.random.fold_in(jax.random.key(config.seed), step)
        mixed, target = mixup(key, images, labels, cfg, enabled)
        return {"image": mixed, "target": target}

    data, rep = batch_sharding(mesh), replicated(mesh)
    return jax.jit(mix, in_shardings=(data, data, rep, rep), out_shardings=data)


def _step_config(config: TrainConfig, mesh: Mesh, say: Callable, platform: str | None = None) -> StepConfig:
    """The train step's options for a step compiled for `platform` (default: the mesh's devices'); BatchNorm per
    device (or `--sync-bn`) with timm's `--dist-bn` applied at every step
    (`mv2jax.train.mesh.dist_bn_running_stats`)."""
    platform = platform or mesh.devices.flat[0].platform
    stat_groups = bn_stat_groups(mesh, config.sync_bn)
    with _user_errors("--dist-bn"):
        running_stats = dist_bn_running_stats(config.dist_bn, stat_groups)
    if config.dist_bn == "" and stat_groups > 1:
        say(
            "--dist-bn '' (no BatchNorm sync): mv2jax keeps rank 0's running statistics, as --dist-bn broadcast "
            "(what timm saves; timm would evaluate each device with its own)"
        )
    return StepConfig(
        label_smoothing=config.smoothing,
        ema_decay=config.model_ema_decay,
        ema_warmup=config.model_ema_warmup,
        bn_stat_groups=stat_groups,
        bn_running_stats=running_stats,
        flat_norms=_packs(config, platform),
        bn_stats_buffer=stats_buffer_on(platform),
    )


def build_run(config: TrainConfig) -> tuple[Run, TrainState]:
    """Datasets, model, optimizer, jitted steps and loaders for `config`; and the fresh (sharded) train state."""
    is_primary = jax.process_index() == 0
    with _user_errors("dataset"):
        train_ds, eval_ds = _datasets(config)
    num_classes = config.num_classes or train_ds.num_classes
    if num_classes < train_ds.num_classes:
        raise ConfigError(f"--num-classes {num_classes} < the {train_ds.num_classes} classes of the dataset")
    with _user_errors("model"):
        loaded = _create_model(config, num_classes)
    model = loaded.model
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
    tx, schedule, num_epochs = _optimizer(config, steps_per_epoch, global_batch, say, mesh.devices.flat[0].platform)
    graphdef, state = create_train_state(model, tx, use_ema=config.model_ema)
    step_config = _step_config(config, mesh, say)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    say(
        f"Model {config.model} created, param count: {n_params}; {len(train_ds)} train / {len(eval_ds)} eval "
        f"images, {num_classes} classes, input {tuple(data_config['input_size'])}; {devices} device(s) x "
        f"{config.batch_size} = global batch {global_batch}, {steps_per_epoch} steps/epoch, {num_epochs} epochs"
    )
    say(f"Initial {loaded.meta.weights_summary()}")
    run = Run(
        config=config,
        mesh=mesh,
        graphdef=graphdef,
        train_step=make_train_step(graphdef, tx, schedule, step_config, mesh),
        schedule=schedule,
        eval_step=make_eval_step(graphdef, state.rng_state, mesh),
        mix_fn=_make_mix_fn(config, num_classes, mesh),
        train_loader=train_loader,
        eval_loader=eval_loader,
        steps_per_epoch=steps_per_epoch,
        num_epochs=num_epochs,
        global_batch=global_batch,
        run_dir=config.output_dir(data_config["input_size"][-1]),
        model_meta={
            "model_name": config.model,
            "global_pool": config.gp or "avg",
            "num_classes": num_classes,
            "in_chans": data_config["input_size"][0],
            "data_config": data_config,
            "class_names": list(train_ds.class_names),
            "mv2jax_version": mv2jax.__version__,
        },
        is_primary=is_primary,
    )
    return run, shard_train_state(state, mesh)


# --- resume -------------------------------------------------------------------------------------------------------


def _check_same_run(run: Run, meta: Mapping[str, Any]) -> None:
    saved, now = meta.get("config", {}), run.config.to_dict()
    diffs = [k for k in RESUME_IDENTITY if saved.get(k) != now[k]]
    if diffs:
        flags = ", ".join(f"--{k.replace('_', '-')} ({saved.get(k)!r} there, {now[k]!r} now)" for k in diffs)
        raise ConfigError(
            f"{run.run_dir} holds a checkpoint of another run: {flags}. Pass --experiment NAME or "
            f"--output DIR for a new run, or --resume {run.run_dir} to load it anyway"
        )


def _check_same_model(run: Run, meta: Mapping[str, Any], where: str) -> None:
    """Refuse, in one line, a checkpoint of another network before restoring it (orbax would fail deep inside
    with a shape error)."""
    keys = ("model_name", "num_classes", "in_chans", "global_pool")
    diffs = [k for k in keys if k in meta and meta[k] != run.model_meta[k]]
    if diffs:
        there = ", ".join(f"{k} {meta[k]!r} there, {run.model_meta[k]!r} now" for k in diffs)
        raise ConfigError(
            f"{where} is a checkpoint of another network ({there}); pass the --model/--num-classes/--in-chans/--gp "
            "it was trained with, or another --resume"
        )


def resume_source(run: Run) -> tuple[TrainCheckpointer, int] | None:
    """`--resume PATH`'s checkpoints (read-only) and step, checked to be of this run's network; None without
    --resume. Called before the run directory is created, so a wrong path leaves nothing behind."""
    if not run.config.resume:
        return None
    root, step = find_checkpoint(run.config.resume)
    if step is None:
        raise ConfigError(f"--resume {run.config.resume}: no checkpoint there")
    source = TrainCheckpointer(root, read_only=True, best_metric=None)
    _check_same_model(run, source.read_meta(step), f"{root}/{step}")
    return source, step


def resume(
    run: Run, state: TrainState, ckpt: TrainCheckpointer, resumed: tuple[TrainCheckpointer, int] | None = None
) -> tuple[TrainState, Start]:
    """The state to start from: `--resume PATH` (`resumed`, from `resume_source`), else the run directory's latest
    checkpoint, else `state`. `--start-epoch` overrides the epoch (and update count) either way, as in timm."""
    config, source, step = run.config, None, None
    if resumed is None and config.resume:
        resumed = resume_source(run)
    if resumed is not None:
        source, step = resumed
        if source.directory == ckpt.directory:  # the run's own checkpoints: read them through its manager
            source.close()
            source = ckpt
    elif (step := ckpt.latest_step()) is not None:
        source = ckpt
        _check_same_run(run, ckpt.read_meta(step))
    start = Start()
    if source is not None:
        where = f"{source.directory}/{step}"
        _check_same_model(run, source.read_meta(step), where)
        with _user_errors(f"checkpoint {where}"):  # e.g. an optimizer state of another layout
            relayout_opt = functools.partial(relayout, params=state.params, decays=decay_groups(config.weight_decay))
            restored = source.restore(step, state, restore_opt=not config.no_resume_opt, relayout_opt=relayout_opt)
        meta = restored.meta
        state = restored.state
        start = Start(
            step,
            meta["epoch"],
            meta.get("epoch_step", 0),
            meta.get("epoch_loss_sum", 0.0),
            restored.data_state,
            f"{source.directory}/{step}",
            meta,
        )
    if config.start_epoch is not None:
        start = dataclasses.replace(start, epoch=config.start_epoch, epoch_step=0, loss_sum=0.0)
    expected = start.epoch * run.steps_per_epoch + start.epoch_step
    if int(jax.device_get(state.step)) != expected:  # --start-epoch, or a changed --steps-per-epoch
        state = set_step(state, expected)
    return shard_train_state(state, run.mesh), dataclasses.replace(start, step=expected)


def seek_loader(run: Run, it: LoaderIterator, step: int) -> None:
    """Move the train loader to global update `step` (a no-op when it is there already)."""
    position = run.loader_position(step)
    if it.step != position:
        it.set_state(dict(it.get_state(), step=position))


def restore_loader(run: Run, it: LoaderIterator, start: Start) -> None:
    """The train loader at `start`: its saved state (if any and it fits), then at update `start.step`."""
    if start.data_state:
        try:
            it.set_state(start.data_state)
        except (ValueError, KeyError) as e:  # e.g. --resume from a run on other data
            run.say(f"loader state not restored ({e}); starting the loader at update {start.step}")
    seek_loader(run, it, start.step)
