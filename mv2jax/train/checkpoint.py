"""Training checkpoints: an orbax `CheckpointManager` over `<run>/checkpoints/<step>/`, plus preemption.

Each step directory holds these orbax items (async, atomic: orbax writes a temporary directory and renames it on
commit, so a kill never leaves a half checkpoint that resume would pick up):

- `state`: `{'model': ..., 'ema': ...}`, each the model's Param + BatchStat state as one nested dict in mv2jax
  layout (conv HWIO, linear `[in, out]`): the mv2jax checkpoint form, so `mv2jax.convert.read_checkpoint(step_dir)`
  and `convert_weights.py --to-timm --input step_dir [--ema]` read a training checkpoint directly.
- `opt_state`: the optax state.
- `train`: `{'step': int32, 'rng_state': ...}` (the model's dropout / drop-path RNG streams, keys as raw uint32
  key data).
- `meta` (JSON): `model_name`, `global_pool`, `num_classes`, `class_names` (the train split's, by class index),
  `data_config` (the resolved preprocessing it trained with), `has_ema`, `epoch` (epochs completed),
  `epoch_step` (updates done in the current epoch), `config` (`TrainConfig.to_dict()`), `metrics`, ...
- `data` (JSON): the loader iterator's state (`LoaderIterator.get_state()`, identical on every process).

Retention: the last `keep_last` checkpoints plus the best one by the eval metric (orbax preservation policies).

Preemption: `PreemptionGuard` turns SIGTERM and a first Ctrl-C (SIGINT) into a request the loop polls at every step
boundary; a second Ctrl-C stops at once. With several processes, orbax's `reached_preemption` (JAX's preemption sync
service) makes all processes stop at the same step. Data-loading workers inherit both signals blocked, so a signal
sent to the whole process group stops only the training process.
"""

from __future__ import annotations

import _thread
import contextlib
import dataclasses
import logging
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from mv2jax.signals import ForwardToMain, can_forward, sigint_deferred
from mv2jax.train.state import TrainState
from mv2jax.weights import checkpoint_steps

PyTree = Any
ITEMS = ("state", "opt_state", "train", "meta", "data")


# --- tree helpers -------------------------------------------------------------------------------------------------


def merge_trees(a: Mapping, b: Mapping) -> dict:
    """Deep merge of two nested dicts with disjoint leaves (params + batch_stats -> one module state)."""
    out = dict(a)
    for k, v in b.items():
        if k in out and isinstance(out[k], Mapping) and isinstance(v, Mapping):
            out[k] = merge_trees(out[k], v)
        elif k in out:
            raise ValueError(f"key {k!r} is a leaf in both trees")
        else:
            out[k] = v
    return out


def take_like(tree: Mapping, template: Mapping) -> dict:
    """The part of nested dict `tree` with the keys of `template` (inverse of `merge_trees`)."""
    return {k: take_like(tree[k], v) if isinstance(v, Mapping) else tree[k] for k, v in template.items()}


def module_state(params: PyTree, batch_stats: PyTree) -> dict:
    """params + batch_stats -> the mv2jax checkpoint form of a module (one nested dict)."""
    return merge_trees(params, batch_stats)


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def encode_rng(rng_state: PyTree) -> PyTree:
    """Typed PRNG keys -> their uint32 key data (what a checkpoint can store); other leaves unchanged."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, rng_state)


def decode_rng(encoded: PyTree, template: PyTree) -> PyTree:
    """Inverse of `encode_rng`, with the key implementations of `template`."""
    return jax.tree.map(
        lambda e, t: jax.random.wrap_key_data(e, impl=jax.random.key_impl(t)) if _is_key(t) else e, encoded, template
    )


def _abstract(tree: PyTree) -> PyTree:
    """ShapeDtypeStructs (with shardings) of the arrays of `tree`: the restore target."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def set_step(state: TrainState, step: int) -> TrainState:
    """`state` at update `step`: the step counter and every scalar optax `count` (schedules read those)."""
    count = jnp.asarray(step, jnp.int32)
    try:
        opt_state = optax.tree_utils.tree_set(state.opt_state, lambda _, v: jnp.ndim(v) == 0, count=count)
    except KeyError:  # an optimizer without counts
        opt_state = state.opt_state
    return state.replace(step=count, opt_state=opt_state)


# --- the manager --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Restored:
    """What `TrainCheckpointer.restore` returns: the train state, the JSON meta and the loader state."""

    state: TrainState
    meta: dict
    data_state: dict | None


class TrainCheckpointer:
    """Saves and restores train states under `directory` (`<run>/checkpoints`).

    keep_last: the number of latest checkpoints kept (timm's --checkpoint-hist); best_metric: the `metrics` key
    whose best checkpoint is kept as well (higher is better unless `higher_is_better=False`).
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        keep_last: int = 10,
        best_metric: str | None = "top1",
        higher_is_better: bool = True,
        read_only: bool = False,
        async_save: bool = True,
    ):
        self.directory = Path(directory).absolute()
        self.best_metric, self.higher_is_better = best_metric, higher_is_better
        policies: list = [ocm.LatestN(n=keep_last)]
        best_fn = None
        if best_metric:
            best_fn = lambda m: m[best_metric]
            policies.append(
                ocm.BestN(
                    get_metric_fn=best_fn, reverse=not higher_is_better, n=1, keep_checkpoints_without_metrics=False
                )
            )
        # best_fn also makes orbax write the metrics to disk, so the best survives a restart
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocm.AnyPreservationPolicy(policies),
            best_fn=best_fn,
            best_mode="max" if higher_is_better else "min",
            read_only=read_only,
            enable_async_checkpointing=async_save,
            create=not read_only,
            cleanup_tmp_directories=not read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def best_step(self) -> int | None:
        """The step with the best `best_metric` among kept checkpoints (None if none has metrics)."""
        scored = [
            (m[self.best_metric], s)
            for s in self.all_steps()
            if self.best_metric and (m := self.manager.metrics(s)) and self.best_metric in m
        ]
        if not scored:
            return None
        return (max if self.higher_is_better else min)(scored)[1]

    def save(
        self,
        state: TrainState,
        *,
        meta: Mapping[str, Any],
        data_state: Mapping[str, Any] | None,
        metrics: Mapping[str, float] | None = None,
    ) -> bool:
        """Start an async save of `state` at `state.step` (returns at once; False if that step is saved already).

        The arrays are copied to host memory before this returns, so `state` may be donated to the next step."""
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return False
        tree = {"model": module_state(state.params, state.batch_stats)}
        if state.ema is not None:
            tree["ema"] = module_state(state.ema["params"], state.ema["batch_stats"])
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(tree),
            opt_state=ocp.args.StandardSave(state.opt_state),
            train=ocp.args.StandardSave({"step": state.step, "rng_state": encode_rng(state.rng_state)}),
            meta=ocp.args.JsonSave(dict(meta, has_ema=state.ema is not None)),
            data=ocp.args.JsonSave(dict(data_state or {})),
        )
        # a preemption checkpoint has no metrics, on purpose; a second Ctrl-C waits until the save is under way
        with _quiet_absl("did not provide metrics"), sigint_deferred():
            return self.manager.save(step, args=args, metrics=dict(metrics) if metrics else None)

    def read_meta(self, step: int) -> dict:
        return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def restore(
        self,
        step: int,
        template: TrainState,
        *,
        restore_opt: bool = True,
        relayout_opt: Callable[[PyTree], PyTree] | None = None,
    ) -> Restored:
        """The train state saved at `step`, shaped and placed like `template` (e.g. the freshly created state,
        already sharded). Without `restore_opt` the optimizer state of `template` is kept, its counts set to `step`.
        An EMA missing from the checkpoint starts as a copy of the restored weights (as timm's resume does).
        `relayout_opt(opt_state)`: the optimizer state in the optimizer's other layout (`optim.relayout` bound to
        the parameters); with it, an optimizer state saved in that layout (packed or per parameter) is converted."""
        meta = self.read_meta(step)
        model_template = module_state(template.params, template.batch_stats)
        state_target = {"model": model_template}
        if meta.get("has_ema"):
            state_target["ema"] = model_template
        items = {
            "state": ocp.args.StandardRestore(_abstract(state_target)),
            "train": ocp.args.StandardRestore(
                _abstract({"step": template.step, "rng_state": encode_rng(template.rng_state)})
            ),
            "data": ocp.args.JsonRestore(),
        }
        got = dict(self.manager.restore(step, args=ocp.args.Composite(**items)))
        if restore_opt:
            got["opt_state"] = self._restore_opt_state(step, template.opt_state, relayout_opt)
        model = got["state"]["model"]
        params, batch_stats = take_like(model, template.params), take_like(model, template.batch_stats)
        ema = None
        if template.ema is not None:
            source = got["state"].get("ema", model)
            ema = {"params": take_like(source, template.params), "batch_stats": take_like(source, template.batch_stats)}
            ema = jax.tree.map(lambda x: x.copy(), ema)  # separate buffers from the model's (both are donated)
        state = TrainState(
            step=got["train"]["step"],
            params=params,
            batch_stats=batch_stats,
            rng_state=decode_rng(got["train"]["rng_state"], template.rng_state),
            opt_state=got["opt_state"] if restore_opt else template.opt_state,
            ema=ema,
        )
        if not restore_opt:
            state = set_step(state, int(jax.device_get(state.step)))
        return Restored(state, meta, dict(got["data"]) if got.get("data") else None)

    def _restore_opt_state(
        self, step: int, opt_state: PyTree, relayout: Callable[[PyTree], PyTree] | None = None
    ) -> PyTree:
        """The optimizer state saved at `step`, shaped like `opt_state`: as saved, or, saved in the other layout,
        read in that one and converted by `relayout`. A one-line error if neither fits (another optimizer)."""
        saved = self._restore_opt_tree(step, _abstract(opt_state))
        if saved is not None:
            return saved
        if relayout is not None:
            sharding = getattr(jax.tree.leaves(opt_state)[0], "sharding", None)  # the state is replicated
            other = jax.tree.map(
                lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                jax.eval_shape(relayout, opt_state),
            )
            saved = self._restore_opt_tree(step, other)
            if saved is not None:
                converted = jax.jit(relayout, out_shardings=jax.tree.map(lambda x: x.sharding, opt_state))(saved)
                if jax.tree.structure(converted) == jax.tree.structure(opt_state):
                    return converted
        raise ValueError(
            f"checkpoint step {step}: its optimizer state does not fit this optimizer (another --opt, "
            f"--weight-decay grouping or model): resume with --no-resume-opt to restore the weights, EMA and step "
            f"with a fresh optimizer state"
        )

    def _restore_opt_tree(self, step: int, target: PyTree) -> PyTree | None:
        """The optimizer state saved at `step` read as `target` (ShapeDtypeStructs), or None if it has another
        structure or shapes."""
        args = ocp.args.Composite(opt_state=ocp.args.StandardRestore(target))
        try:
            return self.manager.restore(step, args=args)["opt_state"]
        except ValueError as err:
            if "do not match" not in str(err):
                raise
            return None

    def wait(self) -> None:
        """Block until pending async saves are committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        # orbax's close() does not wait for the leftover-temp-directory cleanup its constructor starts; a run that
        # stops at once (bad --resume) would exit under that thread, which then prints a traceback at shutdown.
        cleanup = getattr(self.manager, "_cleanup_tmp_directory_future", None)
        if cleanup is not None:
            cleanup.result()
        self.manager.close()


@contextlib.contextmanager
def _quiet_absl(text: str) -> Iterator[None]:
    """Drop absl log records containing `text` while inside."""
    drop = lambda record: text not in record.getMessage()
    logger = logging.getLogger("absl")
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def find_checkpoint(path: str | Path) -> tuple[Path, int | None]:
    """(checkpoints directory, step) for `--resume PATH`: a step directory (`.../checkpoints/440`), a checkpoints
    directory or a run directory (its latest step). step is None when there is no checkpoint there."""
    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"--resume {path}: no such checkpoint directory")
    return checkpoint_steps(path)


# --- preemption ---------------------------------------------------------------------------------------------------


class PreemptionGuard:
    """SIGTERM, or a first Ctrl-C (SIGINT) -> a stop request seen at the next step boundary (`requested(step)`);
    a second Ctrl-C raises KeyboardInterrupt in the main thread at its next Python instruction (the run stops without
    saving; a `sigint_deferred` section, such as the start of a checkpoint write, ends first); later ones are
    ignored while that unwinds.

    The signals are blocked in the calling thread while inside and handed to the main thread by
    `mv2jax.signals.ForwardToMain`: enter the guard before any data-loading thread or worker process starts, so they
    inherit the block. A signal sent to the whole process group (a terminal's Ctrl-C, SLURM's `kill -TERM -PGID`)
    then stops only the training process, which saves a checkpoint and closes its workers itself; a worker killed
    mid-batch would print a traceback, leave its shared memory behind, and one killed mid-start would leave the
    loader waiting forever.

    Several processes: JAX's preemption sync service (set up by `jax.distributed.initialize`) catches SIGTERM, and
    `reached_preemption(step)` is True at the same step on every process, so all of them save together. SIGTERM is
    left to it (not blocked), and a first SIGINT joins the same request: the process sends itself SIGTERM. `manager`
    may be set after entering. `interrupted` says whether this process got a Ctrl-C (train.py exits 130 then).
    """

    def __init__(self, manager: ocp.CheckpointManager | None = None, multi_process: bool | None = None):
        self.manager = manager
        self.multi_process = jax.process_count() > 1 if multi_process is None else multi_process
        self.signal_received: int | None = None  # the first stop signal of this process
        self.interrupts = 0  # SIGINTs received
        self._signals = (signal.SIGINT,) if self.multi_process else (signal.SIGINT, signal.SIGTERM)
        self._previous_handlers: dict[int, Any] = {}
        self._forward = ForwardToMain(self._signals, on_signal=self._received)
        self._abort = self._abort_raised = self._closing = False

    @property
    def interrupted(self) -> bool:
        return self.interrupts > 0

    def __enter__(self) -> PreemptionGuard:
        if can_forward():
            self._previous_handlers = {s: signal.signal(s, self._handle) for s in self._signals}
            self._forward.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._closing = True  # a signal still pending is delivered when the block ends: the run is over, drop it
        self._forward.__exit__(*exc)
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def _received(self, signum: int) -> None:
        """Counts a signal (in the thread that waits for them, or in the main thread's handler)."""
        if self._closing:
            return
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:  # every later one too: `sigint_deferred` lets a second one through at once
                self._stop_now()
                return
        if self.signal_received is None:
            self.signal_received = signum
            if self.multi_process:
                self._request_sync()

    def _stop_now(self) -> None:
        self._abort = True
        _thread.interrupt_main(signal.SIGINT)  # `_handle` raises KeyboardInterrupt in the main thread

    def _handle(self, signum: int, frame: Any) -> None:
        """The Python handler, in the main thread: raises the abort `_stop_now` asked for, else counts a signal
        that reached a thread started before the guard (those do not block it)."""
        if self._abort:
            if not self._abort_raised:
                self._abort_raised = True
                raise KeyboardInterrupt
            return
        self._received(signum)

    def _request_sync(self) -> None:
        """Several processes: ask JAX's preemption sync service (which listens for SIGTERM) to stop every process
        at the same step; without that service, stop this one at once."""
        if jax.config.jax_enable_preemption_service:
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            self._stop_now()

    def requested(self, step: int) -> bool:
        if self.multi_process:
            return self.manager is not None and bool(self.manager.reached_preemption(step))
        return self.signal_received is not None
