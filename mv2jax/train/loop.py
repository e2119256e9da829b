"""The training program: timm train.py's epochs x steps over mv2jax's pure, jitted train and eval steps, on a
`Run` built (and resumed) by `mv2jax.train.run`.

Per step: loader batch -> `shard_batch` -> [mixup] -> jitted train step (state donated). The finite check of step
`n` runs after step `n + 1` is dispatched (the device never waits for the host); a non-finite step raises
FloatingPointError before anything is saved, so the last checkpoint is always of a finite state.
Per epoch end: eval of the raw and the EMA weights on the eval split (every example exactly once; timm's
`--dist-bn` already shaped the BatchNorm running statistics at every step), an async checkpoint, then
summary.csv / log.jsonl / curves.png (process 0).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mv2jax import host_memory
from mv2jax.compile_cache import enable_compile_cache
from mv2jax.data.loader import LoaderIterator
from mv2jax.metrics import averages
from mv2jax.train.checkpoint import PreemptionGuard, TrainCheckpointer
from mv2jax.train.config import TrainConfig
from mv2jax.train.logging import RunLogger
from mv2jax.train.mesh import initialize_distributed, shard_batch
from mv2jax.train.run import Run, Start, build_run, restore_loader, resume, resume_source, seek_loader
from mv2jax.train.state import TrainState
from mv2jax.train.step import check_finite
from mv2jax.weights import CHECKPOINTS_DIR

EVAL_KEYS = ("image", "label", "mask")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """The outcome: the run directory, epochs and updates done, last raw/EMA eval metrics ({loss, top1, top5},
    top-1/top-5 in percent), the best checkpoint step, whether SIGTERM or Ctrl-C stopped it (`preempted`, after
    saving a checkpoint) and whether that was a Ctrl-C (`interrupted`), wall time (s)."""

    run_dir: Path
    epochs_done: int
    step: int
    eval: dict | None = None
    eval_ema: dict | None = None
    best_step: int | None = None
    preempted: bool = False
    interrupted: bool = False
    already_complete: bool = False
    wall_time: float = 0.0


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
        logger.log(
            {
                "kind": "step",
                "epoch": ep.epoch,
                "step": step + 1,
                "loss": loss,
                "lr": ep.lr,
                "grad_norm": float(host["grad_norm"]),
                "param_norm": float(host["param_norm"]),
                "img_per_s": rate,
            }
        )


def train_epoch(
    run: Run, state: TrainState, it: LoaderIterator, ep: EpochState, guard: PreemptionGuard, logger: RunLogger
) -> TrainState:
    """Train from update `ep.done` of epoch `ep.epoch` to its end, or until a stop is requested."""
    config, spe = run.config, run.steps_per_epoch
    seek_loader(run, it, ep.epoch * spe + ep.done)
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


def eval_totals(run: Run, weights: list[tuple[Any, Any]]) -> list[dict[str, Any]]:
    """For each (params, batch_stats), one pass over the eval split: the `mv2jax.metrics.masked_sums` totals
    (`loss_sum`, `top1`, `top5`, `count`) of its real examples, every example counted exactly once."""
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
    return jax.device_get(totals)


def evaluate(run: Run, weights: list[tuple[Any, Any]]) -> list[dict[str, float]]:
    """timm's validate for each (params, batch_stats) in one pass over the eval split: {loss, top1, top5}
    (plain cross entropy; top-k in percent)."""
    return [averages(t) for t in eval_totals(run, weights)]


def _meta(run: Run, ep: EpochState, epoch_done: bool, evals: Mapping[str, Any] | None = None) -> dict:
    """The checkpoint's JSON meta: the model (for read_checkpoint / convert_weights.py), config and progress."""
    return dict(
        run.model_meta,
        config=run.config.to_dict(),
        epoch=ep.epoch + 1 if epoch_done else ep.epoch,
        epoch_step=0 if epoch_done else ep.done,
        epoch_loss_sum=0.0 if epoch_done else ep.loss_sum,
        steps_per_epoch=run.steps_per_epoch,
        metrics=dict(evals or {}),
    )


def finish_epoch(
    run: Run,
    state: TrainState,
    ep: EpochState,
    it: LoaderIterator,
    ckpt: TrainCheckpointer,
    logger: RunLogger,
    train_seconds: float,
) -> tuple[TrainState, dict]:
    """timm's epoch end: eval raw + EMA, checkpoint (ranked by the EMA's metric when EMA is on), logs. (timm's
    dist_bn comes first there; here the train step already kept the running statistics it would give.) The epoch's
    record and line give the train (`train_seconds`), eval and checkpoint times apart: each can dominate."""
    weights = [(state.params, state.batch_stats)]
    if state.ema is not None:
        weights.append((state.ema["params"], state.ema["batch_stats"]))
    t_eval = time.perf_counter()
    evals = evaluate(run, weights)
    raw, ema = evals[0], (evals[1] if len(evals) > 1 else None)
    ranked = ema or raw
    t_save = time.perf_counter()
    ckpt.save(  # the time until the arrays are on the host (and any earlier save is committed); writing is async
        state, meta=_meta(run, ep, True, {"eval": raw, "eval_ema": ema}), data_state=it.get_state(), metrics=ranked
    )
    times = {
        "train_time": train_seconds,
        "eval_time": t_save - t_eval,
        "checkpoint_time": time.perf_counter() - t_save,
    }
    record = {
        "epoch": ep.epoch,
        "step": (ep.epoch + 1) * run.steps_per_epoch,
        "train_loss": ep.loss_sum / ep.done,
        "lr": run.summary_lr(ep.epoch),
        "eval": raw,
        "eval_ema": ema,
        **times,
        "img_per_s": ep.done * run.global_batch / train_seconds,
    }
    logger.epoch_end(record, ranked, last=ep.epoch + 1 == run.num_epochs)
    ema_text = f" | EMA top1 {ema['top1']:.2f} top5 {ema['top5']:.2f} loss {ema['loss']:.4f}" if ema else ""
    run.say(
        f"Epoch {ep.epoch}: train_loss {record['train_loss']:.4f} | eval top1 {raw['top1']:.2f} top5 "
        f"{raw['top5']:.2f} loss {raw['loss']:.4f}{ema_text} | lr {record['lr']:.3e} | {epoch_times_text(record)}"
    )
    return state, record


def epoch_times_text(record: Mapping[str, Any]) -> str:
    """'train 12.3 s, eval 4.5 s, checkpoint 0.6 s' from an epoch record's times."""
    return ", ".join(f"{name} {record[f'{name}_time']:.1f} s" for name in ("train", "eval", "checkpoint"))


# --- the whole run ------------------------------------------------------------------------------------------------


def _open_checkpointer(run: Run) -> TrainCheckpointer:
    metric = run.config.eval_metric
    return TrainCheckpointer(
        run.run_dir / CHECKPOINTS_DIR,
        keep_last=run.config.checkpoint_hist,
        best_metric=metric,
        higher_is_better=metric != "loss",
    )


def _complete_result(run: Run, start: Start, ckpt: TrainCheckpointer, t0: float) -> TrainResult:
    evals = (start.meta or {}).get("metrics", {})
    run.say(
        f"Training already complete: {start.epoch} epochs in {run.run_dir} (pass --experiment NAME or "
        "--output DIR for a new run, or raise --epochs to train on)"
    )
    return TrainResult(
        run.run_dir,
        start.epoch,
        start.step,
        evals.get("eval"),
        evals.get("eval_ema"),
        ckpt.best_step(),
        already_complete=True,
        wall_time=time.perf_counter() - t0,
    )


def _run_epochs(
    run: Run,
    state: TrainState,
    start: Start,
    it: LoaderIterator,
    ckpt: TrainCheckpointer,
    logger: RunLogger,
    guard: PreemptionGuard,
    t0: float,
) -> TrainResult:
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
            return TrainResult(
                run.run_dir,
                epoch,
                step,
                record.get("eval"),
                record.get("eval_ema"),
                preempted=True,
                interrupted=guard.interrupted,
                wall_time=time.perf_counter() - t0,
            )
        state, record = finish_epoch(run, state, ep, it, ckpt, logger, time.perf_counter() - t_epoch)
        if epoch + 1 < run.num_epochs and guard.requested((epoch + 1) * run.steps_per_epoch):
            logger.plot()
            return TrainResult(
                run.run_dir,
                epoch + 1,
                (epoch + 1) * run.steps_per_epoch,
                record["eval"],
                record["eval_ema"],
                preempted=True,
                interrupted=guard.interrupted,
                wall_time=time.perf_counter() - t0,
            )
    ckpt.wait()
    return TrainResult(
        run.run_dir,
        run.num_epochs,
        run.num_epochs * run.steps_per_epoch,
        record.get("eval"),
        record.get("eval_ema"),
        ckpt.best_step(),
        wall_time=time.perf_counter() - t0,
    )


def _open_compile_cache(config: TrainConfig) -> str | None:
    """Turn on the persistent compilation cache unless the run spans processes on the CPU backend: a program read
    back from the cache there runs its cross-process (gloo) collectives as if alone on some jax versions (0.12), and
    the first step waits forever. Returns a note for the run log when the cache is turned off for that reason."""
    if config.distributed and jax.default_backend() == "cpu" and config.compile_cache != "":
        enable_compile_cache("")
        return "Compile cache: off (several processes on the CPU backend)"
    enable_compile_cache(config.compile_cache)
    return None


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) training for `config`. Raises FloatingPointError (one line) if a step is non-finite, after
    pending checkpoint saves completed; ConfigError for a configuration that cannot run."""
    t0 = time.perf_counter()
    if config.distributed:
        initialize_distributed(config.coordinator_address, config.num_processes, config.process_id)
    cache_note = _open_compile_cache(config)
    with PreemptionGuard(multi_process=config.distributed) as guard:  # before any loader thread or worker starts
        run, state = build_run(config)
        resumed = resume_source(run)  # --resume's checkpoint, checked before the run directory is created
        ckpt = _open_checkpointer(run)
        guard.manager = ckpt.manager
        it = iter(run.train_loader)
        try:
            state, start = resume(run, state, ckpt, resumed)
            if start.source:
                run.say(f"Resumed from {start.source} at epoch {start.epoch}, update {start.step}")
            run.say(f"Output: {run.run_dir}")
            if cache_note:
                run.say(cache_note)
            run.say(f"Host allocator: {host_memory.decide(config.host_allocator).describe()}")
            if start.epoch >= run.num_epochs:
                return _complete_result(run, start, ckpt, t0)
            logger = RunLogger(run.run_dir, enabled=run.is_primary, log_interval=config.log_interval)
            logger.start(config.to_dict(), start.epoch, start.step)
            restore_loader(run, it, start)
            return _run_epochs(run, state, start, it, ckpt, logger, guard, t0)
        except FloatingPointError as e:
            ckpt.wait()
            last = ckpt.latest_step()
            where = f"last checkpoint: {ckpt.directory / str(last)}" if last is not None else "no checkpoint saved"
            raise FloatingPointError(f"{e}; {where}") from None
        finally:
            it.close()
            ckpt.close()  # waits for async saves: the last good checkpoint is complete whatever happened
