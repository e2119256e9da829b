"""Training checkpoints: an orbax `CheckpointManager` over `<run>/checkpoints/<step>/`, plus preemption.

Each step directory holds these orbax items (async, atomic: orbax writes a temporary directory and renames it on
commit, so a kill never leaves a half checkpoint that resume would pick up):

- `state`: `{'model': ..., 'ema': ...}`, each the model's Param + BatchStat state as one nested dict in mv2jax
  layout (conv HWIO, linear `[in, out]`): the mv2jax checkpoint form, so `mv2jax.convert.read_checkpoint(step_dir)`
  and `convert_weights.py --to-timm --input step_dir [--ema]` read a training checkpoint directly.
- `opt_state`: the optax state.
- `train`: `{'step': int32, 'rng_state': ...}` (the model's dropout / drop-path RNG streams, keys as raw uint32
  key data).
- `meta` (JSON): `model_name`, `global_pool`, `num_classes`, `has_ema`, `epoch` (epochs completed),
  `epoch_step` (updates done in the current epoch), `config` (`TrainConfig.to_dict()`), `metrics`, ...
- `data` (JSON): the loader iterator's state (`LoaderIterator.get_state()`, identical on every process).

Retention: the last `keep_last` checkpoints plus the best one by the eval metric (orbax preservation policies).

Preemption: `PreemptionGuard` turns SIGTERM into a request the loop polls at every step boundary; with several
processes, orbax's `reached_preemption` (JAX's preemption sync service) makes all processes stop at the same step.
Data-loading workers inherit a blocked SIGTERM, so a signal sent to the whole process group stops only the training
process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from mv2jax.train.state import TrainState

PyTree = Any
ITEMS = ("state", "opt_state", "train", "meta", "data")
CHECKPOINTS_DIR = "checkpoints"


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
        with _quiet_absl("did not provide metrics"):  # a preemption checkpoint has none, on purpose
            return self.manager.save(step, args=args, metrics=dict(metrics) if metrics else None)

    def read_meta(self, step: int) -> dict:
        return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def restore(self, step: int, template: TrainState, *, restore_opt: bool = True) -> Restored:
        """The train state saved at `step`, shaped and placed like `template` (e.g. the freshly created state,
        already sharded). Without `restore_opt` the optimizer state of `template` is kept, its counts set to `step`.
        An EMA missing from the checkpoint starts as a copy of the restored weights (as timm's resume does)."""
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
            got["opt_state"] = self._restore_opt_state(step, template.opt_state)
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

    def _restore_opt_state(self, step: int, opt_state: PyTree) -> PyTree:
        """The optimizer state saved at `step`, shaped like `opt_state`; a one-line error if its layout differs
        (another optimizer, or saved by an mv2jax before the packed optimizer state)."""
        args = ocp.args.Composite(opt_state=ocp.args.StandardRestore(_abstract(opt_state)))
        try:
            return self.manager.restore(step, args=args)["opt_state"]
        except ValueError as err:
            if "do not match" not in str(err):
                raise
            raise ValueError(
                f"checkpoint step {step}: its optimizer state does not fit this optimizer (another --opt or model, "
                f"or saved by an mv2jax before the packed optimizer state): resume with --no-resume-opt to restore "
                f"the weights, EMA and step with a fresh optimizer state"
            ) from None

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
    if path.name.isdigit() and (path / "meta").exists():
        return path.parent, int(path.name)
    root = path / CHECKPOINTS_DIR if (path / CHECKPOINTS_DIR).is_dir() else path
    steps = (
        sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / "meta").exists())
        if root.is_dir()
        else []
    )
    return root, (steps[-1] if steps else None)


# --- preemption ---------------------------------------------------------------------------------------------------


class PreemptionGuard:
    """SIGTERM -> a stop request seen at the next step boundary (`requested(step)`).

    Single process: SIGTERM is blocked in the calling thread while inside (enter it before any data-loading thread
    or worker process starts: they inherit the block, which survives exec) and polled with `sigpending` at step
    boundaries. So a scheduler that signals the whole process group (SLURM, `kill -TERM -PGID`) stops only the
    training process, which saves a checkpoint and closes its workers itself; a worker killed mid-start would
    leave it waiting forever. A handler also catches the signal should a thread without the block receive it.

    Several processes: JAX's preemption sync service (set up by `jax.distributed.initialize`) catches the signal
    and `reached_preemption(step)` is True at the same step on every process, so all of them save together; no
    handler or block is installed then. `manager` may be set after entering.
    """

    def __init__(self, manager: ocp.CheckpointManager | None = None, multi_process: bool | None = None):
        self.manager = manager
        self.multi_process = jax.process_count() > 1 if multi_process is None else multi_process
        self.signal_received: int | None = None
        self._previous_handler: Any = None
        self._previous_mask: set | None = None

    def __enter__(self) -> PreemptionGuard:
        if not self.multi_process:
            self._previous_handler = signal.signal(signal.SIGTERM, self._handle)
            if hasattr(signal, "pthread_sigmask"):
                self._previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        return self

    def __exit__(self, *exc) -> None:
        if self.multi_process:
            return
        if self._previous_mask is not None:
            if self._pending():  # handled (we stopped): consume it, or unblocking would deliver it again
                signal.sigtimedwait([signal.SIGTERM], 0)
            signal.pthread_sigmask(signal.SIG_SETMASK, self._previous_mask)
            self._previous_mask = None
        signal.signal(signal.SIGTERM, self._previous_handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal_received = signum

    def _pending(self) -> bool:
        return self._previous_mask is not None and signal.SIGTERM in signal.sigpending()

    def requested(self, step: int) -> bool:
        if self.signal_received is None and self._pending():
            self.signal_received = signal.SIGTERM
        if self.signal_received is not None:
            return True
        return bool(self.multi_process and self.manager is not None and self.manager.reached_preemption(step))
