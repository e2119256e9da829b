"""Training checkpoints: round trip, retention (last N + best), the mv2jax checkpoint form, preemption, and exact
resume of `python train.py` after SIGTERM and after kill -9 (final state equal, array by array, to an
uninterrupted run's)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from mv2jax.convert import read_checkpoint, read_orbax
from mv2jax.train.checkpoint import PreemptionGuard, TrainCheckpointer, find_checkpoint
from mv2jax.train.optim import create_optimizer
from mv2jax.train.schedules import create_schedule
from mv2jax.train.state import TrainState
from mv2jax.weights.orbax_io import local_restore_target

REPO = Path(__file__).resolve().parents[2]
# A tiny run: 4 epochs x 4 updates of 16 digits at 32x32, with everything that carries state across a resume:
# warmup + step schedule, RMSpropTF, EMA with warmup, dropout + drop path, RandAugment, random erasing, mixup.
RUN_FLAGS = [
    "--model",
    "mobilenetv2_035",
    "--dataset",
    "digits",
    "--img-size",
    "32",
    "-b",
    "16",
    "-vb",
    "64",
    "--epochs",
    "4",
    "--steps-per-epoch",
    "4",
    "--sched",
    "step",
    "--decay-epochs",
    "1",
    "--decay-rate",
    "0.8",
    "--warmup-epochs",
    "1",
    "--warmup-lr",
    "1e-4",
    "--opt",
    "rmsproptf",
    "--opt-eps",
    "0.001",
    "--lr",
    "0.01",
    "--weight-decay",
    "1e-5",
    "--drop",
    "0.2",
    "--drop-path",
    "0.2",
    "--model-ema",
    "--model-ema-decay",
    "0.99",
    "--model-ema-warmup",
    "--aa",
    "rand-m9-mstd0.5",
    "--reprob",
    "0.2",
    "--mixup",
    "0.2",
    "-j",
    "0",
    "--conv-impl",
    "xla",
    "--log-interval",
    "2",
    "--checkpoint-hist",
    "2",
    "--seed",
    "0",
]
FINAL_STEP = 16
# Compiled train/eval steps are cached across the test processes (same flags -> same programs).
COMPILE_CACHE = Path(tempfile.gettempdir()) / "mv2jax-test-compile-cache"
TIMEOUT = 400


# --- unit tests on a tiny hand-made train state ------------------------------------------------------------------


def tiny_state(seed: int = 0, step: int = 0) -> tuple[TrainState, optax.GradientTransformation]:
    rng = np.random.default_rng(seed)
    params = {
        "conv": {"weight": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)},
        "bn": {"weight": jnp.asarray(rng.normal(size=4), jnp.float32)},
    }
    batch_stats = {
        "bn": {
            "running_mean": jnp.asarray(rng.normal(size=4), jnp.float32),
            "num_batches_tracked": jnp.asarray(step, jnp.int32),
        }
    }
    rng_state = {"drop": {"rngs": {"key": jax.random.key(seed), "count": jnp.asarray(step, jnp.uint32)}}}
    tx = create_optimizer("rmsproptf", create_schedule("step", lr=0.1, epochs=4, steps_per_epoch=2), eps=1e-3)
    opt_state = tx.init(params)
    for _ in range(step):
        _, opt_state = tx.update(params, opt_state, params)
    ema = jax.tree.map(
        lambda x: x + 1 if jnp.issubdtype(x.dtype, jnp.floating) else x, {"params": params, "batch_stats": batch_stats}
    )
    return TrainState(jnp.asarray(step, jnp.int32), params, batch_stats, rng_state, opt_state, ema), tx


def leaves(tree) -> dict[str, np.ndarray]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {
        jax.tree_util.keystr(p): np.asarray(
            jax.random.key_data(x) if jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key) else x
        )
        for p, x in flat
    }


def assert_trees_equal(a, b) -> None:
    la, lb = leaves(a), leaves(b)
    assert la.keys() == lb.keys()
    for k in la:
        np.testing.assert_array_equal(la[k], lb[k], err_msg=k)
        assert la[k].dtype == lb[k].dtype, k


def test_save_and_restore_round_trip_every_array_rng_key_meta_and_loader_state(tmp_path):
    ckpt = TrainCheckpointer(tmp_path / "checkpoints", keep_last=3)
    state, _ = tiny_state(seed=1, step=3)
    assert ckpt.save(
        state, meta={"model_name": "mobilenetv2_035", "epoch": 1}, data_state={"step": 7}, metrics={"top1": 50.0}
    )
    assert not ckpt.save(state, meta={}, data_state=None)  # the same step again: nothing to do
    ckpt.close()
    ckpt = TrainCheckpointer(tmp_path / "checkpoints", keep_last=3)  # a fresh manager, as a resuming process has
    template, _ = tiny_state(seed=2, step=0)
    restored = ckpt.restore(3, template)
    assert_trees_equal(restored.state, state)
    assert jax.random.key_impl(restored.state.rng_state["drop"]["rngs"]["key"]) == jax.random.key_impl(
        state.rng_state["drop"]["rngs"]["key"]
    )
    assert restored.meta == {"model_name": "mobilenetv2_035", "epoch": 1, "has_ema": True}
    assert restored.data_state == {"step": 7}
    ckpt.close()


def test_restore_without_optimizer_state_keeps_a_fresh_one_at_the_saved_update_count(tmp_path):
    ckpt = TrainCheckpointer(tmp_path / "checkpoints")
    state, tx = tiny_state(seed=1, step=3)
    ckpt.save(state, meta={}, data_state=None)
    ckpt.wait()
    template, _ = tiny_state(seed=2, step=0)
    restored = ckpt.restore(3, template, restore_opt=False).state
    assert_trees_equal(restored.params, state.params)
    counts = optax.tree_utils.tree_get_all_with_path(restored.opt_state, "count")
    assert counts and all(int(c) == 3 for _, c in counts)  # the lr schedule continues where it was
    nu = optax.tree_utils.tree_get(restored.opt_state, "nu")
    assert_trees_equal(nu, optax.tree_utils.tree_get(template.opt_state, "nu"))  # fresh squared averages
    ckpt.close()


def test_an_optimizer_state_of_another_layout_is_refused_in_one_line_and_no_resume_opt_restores(tmp_path):
    """A checkpoint whose optimizer state is shaped per parameter (`pack=False`, as mv2jax saved before packing)
    does not restore into a packed optimizer: a one-line ValueError names --no-resume-opt, which then works."""
    ckpt = TrainCheckpointer(tmp_path / "checkpoints")
    state, _ = tiny_state(seed=1, step=3)
    per_leaf = create_optimizer("rmsproptf", 0.1, eps=1e-3, pack=False)
    ckpt.save(state.replace(opt_state=per_leaf.init(state.params)), meta={}, data_state=None)
    ckpt.close()
    ckpt = TrainCheckpointer(tmp_path / "checkpoints")  # a fresh manager, as a resuming process has
    template, _ = tiny_state(seed=2, step=0)
    with pytest.raises(ValueError, match="optimizer state does not fit this optimizer.*--no-resume-opt") as err:
        ckpt.restore(3, template)
    assert "\n" not in str(err.value)
    restored = ckpt.restore(3, template, restore_opt=False).state
    assert_trees_equal(restored.params, state.params)
    ckpt.close()


@pytest.mark.parametrize(
    "metric, higher, values, best",
    [
        ("top1", True, [50.0, 90.0, 60.0, 70.0, 65.0], 2),
        ("loss", False, [0.5, 0.1, 0.3, 0.4, 0.2], 2),
    ],
)
def test_keeps_the_last_n_plus_the_best(tmp_path, metric, higher, values, best):
    ckpt = TrainCheckpointer(tmp_path / "checkpoints", keep_last=2, best_metric=metric, higher_is_better=higher)
    for step, value in enumerate(values, start=1):
        ckpt.save(tiny_state(step=step)[0], meta={}, data_state=None, metrics={metric: value})
        ckpt.wait()
    assert ckpt.all_steps() == [best, 4, 5]
    assert ckpt.best_step() == best
    ckpt.close()
    # a restarted run (resume) still knows the best: metrics are on disk
    ckpt = TrainCheckpointer(tmp_path / "checkpoints", keep_last=2, best_metric=metric, higher_is_better=higher)
    assert ckpt.best_step() == best
    ckpt.save(tiny_state(step=6)[0], meta={}, data_state=None)  # a preemption checkpoint: no metrics
    ckpt.wait()
    assert ckpt.all_steps() == [best, 5, 6]
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [best, 5, 6]
    ckpt.close()


def test_a_training_checkpoint_is_an_mv2jax_checkpoint(tmp_path):
    ckpt = TrainCheckpointer(tmp_path / "checkpoints")
    state, _ = tiny_state(seed=3, step=1)
    ckpt.save(state, meta={"model_name": "mobilenetv2_035"}, data_state=None)
    ckpt.close()
    step_dir = tmp_path / "checkpoints" / "1"
    tree, meta = read_orbax(step_dir)
    assert meta["model_name"] == "mobilenetv2_035"
    assert set(tree) == {"model", "ema"}
    sd, sd_ema = read_checkpoint(step_dir), read_checkpoint(step_dir, use_ema=True)
    assert set(sd) == {"conv.weight", "bn.weight", "bn.running_mean", "bn.num_batches_tracked"}
    np.testing.assert_array_equal(sd["conv.weight"], np.asarray(state.params["conv"]["weight"]).transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(sd_ema["bn.weight"], np.asarray(state.ema["params"]["bn"]["weight"]))


def test_find_checkpoint_takes_a_step_a_checkpoints_or_a_run_directory(tmp_path):
    ckpt = TrainCheckpointer(tmp_path / "run" / "checkpoints", keep_last=5)
    for step in (2, 4):
        ckpt.save(tiny_state(step=step)[0], meta={}, data_state=None)
    ckpt.close()
    root = (tmp_path / "run" / "checkpoints").absolute()
    assert find_checkpoint(tmp_path / "run") == (root, 4)
    assert find_checkpoint(root) == (root, 4)
    assert find_checkpoint(root / "2") == (root, 2)
    (tmp_path / "empty").mkdir()
    assert find_checkpoint(tmp_path / "empty")[1] is None
    with pytest.raises(FileNotFoundError):
        find_checkpoint(tmp_path / "missing")


def test_sigterm_becomes_a_stop_request_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard(multi_process=False) as guard:
        assert not guard.requested(0)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert guard.requested(1)
    assert signal.getsignal(signal.SIGTERM) is before
    assert signal.SIGTERM not in signal.sigpending()  # consumed: leaving the guard does not kill the process


def test_processes_started_inside_the_guard_ignore_sigterm():
    """Data-loading workers inherit the blocked SIGTERM: a signal to the whole process group stops only the
    training process, which then closes its workers itself."""
    with PreemptionGuard(multi_process=False):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        child.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(1.0)
    finally:
        child.kill()
        child.wait()


# --- exact resume of train.py after SIGTERM and kill -9 ----------------------------------------------------------


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(COMPILE_CACHE))


def launch(run_dir: Path, *extra: str) -> subprocess.Popen:
    """`python train.py RUN_FLAGS` into `run_dir` (stdout/stderr to files there), in its own process group."""
    run_dir.mkdir(parents=True, exist_ok=True)
    n = len(list(run_dir.glob("stdout*")))
    cmd = [
        sys.executable,
        "train.py",
        *RUN_FLAGS,
        "--output",
        str(run_dir.parent),
        "--experiment",
        run_dir.name,
        *extra,
    ]
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=_env(),
        stdout=open(run_dir / f"stdout{n}", "w"),
        stderr=open(run_dir / f"stderr{n}", "w"),
        start_new_session=True,
    )


def output(run_dir: Path, n: int) -> str:
    return (run_dir / f"stdout{n}").read_text() + (run_dir / f"stderr{n}").read_text()


def wait(proc: subprocess.Popen, run_dir: Path, n: int) -> int:
    """The exit code; a run still going after TIMEOUT fails the test with every thread's stack (train.py dumps
    them on SIGUSR1)."""
    try:
        return proc.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(2)
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"{run_dir.name} still running after {TIMEOUT} s:\n{output(run_dir, n)[-6000:]}")


def steps_saved(run_dir: Path) -> list[int]:
    root = run_dir / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


def interrupt_after_first_checkpoint(procs: dict[Path, tuple[subprocess.Popen, int]]) -> dict[Path, int]:
    """Send each process group its signal (as SLURM does: data workers get it too) as soon as its run directory
    holds a committed checkpoint; return the steps saved at that moment."""
    seen, deadline = {}, time.monotonic() + TIMEOUT
    while len(seen) < len(procs) and time.monotonic() < deadline:
        for run_dir, (proc, sig) in procs.items():
            if run_dir not in seen and steps_saved(run_dir):
                os.killpg(proc.pid, sig)
                seen[run_dir] = steps_saved(run_dir)[-1]
            assert run_dir in seen or proc.poll() is None, output(run_dir, 0)
        time.sleep(0.02)
    return seen


def final_state(run_dir: Path, step: int = FINAL_STEP) -> dict:
    checkpointer = ocp.StandardCheckpointer()
    directory = run_dir / "checkpoints" / str(step)
    items = {
        item: checkpointer.restore(directory / item, local_restore_target(directory / item))
        for item in ("state", "opt_state", "train")
    }
    checkpointer.close()
    return items


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory) -> dict[str, Path]:
    """An uninterrupted run, a run stopped by SIGTERM and one killed with -9 (all at once), then both reruns.
    The SIGTERM run loads data with a worker process (-j 1; batches do not depend on the worker count)."""
    root = tmp_path_factory.mktemp("resume")
    dirs = {name: root / name for name in ("reference", "sigterm", "kill9")}
    procs = {name: launch(d, *(["-j", "1"] if name == "sigterm" else [])) for name, d in dirs.items()}
    first = interrupt_after_first_checkpoint(
        {dirs["sigterm"]: (procs["sigterm"], signal.SIGTERM), dirs["kill9"]: (procs["kill9"], signal.SIGKILL)}
    )
    codes = {name: wait(p, dirs[name], 0) for name, p in procs.items()}
    assert codes == {"reference": 0, "sigterm": 0, "kill9": -signal.SIGKILL}, {
        n: output(d, 0)[-2000:] for n, d in dirs.items()
    }
    assert len(first) == 2
    reruns = {name: launch(dirs[name], *(["-j", "1"] if name == "sigterm" else [])) for name in ("sigterm", "kill9")}
    for name, p in reruns.items():
        assert wait(p, dirs[name], 1) == 0, output(dirs[name], 1)[-3000:]
    return dirs


def test_sigterm_to_the_process_group_saves_at_a_step_boundary_exits_0_and_a_rerun_ends_exactly_as_before(resumed_runs):
    run_dir = resumed_runs["sigterm"]
    first, second = output(run_dir, 0), output(run_dir, 1)
    assert "SIGTERM: checkpoint saved at update" in first and "rerun the same command to resume" in first
    assert "Traceback" not in first
    stopped_at = int(first.split("SIGTERM: checkpoint saved at update ")[1].split()[0])
    assert 4 <= stopped_at < FINAL_STEP  # stopped after the first checkpoint, before the end
    assert f"Resumed from {run_dir.absolute()}/checkpoints/{stopped_at}" in second
    assert_trees_equal(final_state(run_dir), final_state(resumed_runs["reference"]))
    assert (run_dir / "summary.csv").read_text() == (resumed_runs["reference"] / "summary.csv").read_text()


def test_kill_9_loses_at_most_an_epoch_and_a_rerun_ends_exactly_as_an_uninterrupted_run(resumed_runs):
    run_dir = resumed_runs["kill9"]
    second = output(run_dir, 1)
    assert f"Resumed from {run_dir.absolute()}/checkpoints/" in second
    assert_trees_equal(final_state(run_dir), final_state(resumed_runs["reference"]))
    # rows the killed run logged past its last checkpoint were dropped, then written again identically
    assert (run_dir / "summary.csv").read_text() == (resumed_runs["reference"] / "summary.csv").read_text()
    leftovers = [p.name for p in (run_dir / "checkpoints").iterdir() if not p.name.isdigit()]
    assert leftovers == []  # no temporary directory of an interrupted save survives


def test_close_waits_for_orbax_temp_directory_cleanup(tmp_path, monkeypatch):
    """orbax's CheckpointManager starts cleaning leftover temp directories in a thread and its close() does not wait
    for it; a run that stops at once (a bad --resume) then exits under that thread, which prints a traceback."""
    from orbax.checkpoint import checkpoint_manager

    done = []

    async def slow_cleanup(*args, **kwargs):
        await asyncio.sleep(0.5)
        done.append(True)

    monkeypatch.setattr(checkpoint_manager.temporary_paths, "cleanup_temporary_paths", slow_cleanup)
    TrainCheckpointer(tmp_path / "checkpoints").close()
    assert done == [True]
