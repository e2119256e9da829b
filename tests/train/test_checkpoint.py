"""Training checkpoints: round trip, retention (last N + best), the mv2jax checkpoint form, preemption, and exact
resume of `python train.py` after SIGTERM, after Ctrl-C through `| tee` and after kill -9 (final state equal, array
by array, to an uninterrupted run's)."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import portpicker
import pytest

from mv2jax.convert import read_checkpoint, read_orbax
from mv2jax.train.checkpoint import PreemptionGuard, TrainCheckpointer, find_checkpoint
from mv2jax.train.optim import create_optimizer, decay_groups, relayout
from mv2jax.train.schedules import create_schedule
from mv2jax.train.state import TrainState
from mv2jax.weights.orbax_io import local_restore_target
from tests.polling import within
from tests.train.devices import xla_flags

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
SIGNAL_GAP_S = 0.1  # between two signals sent one after the other (two Ctrl-C): each arrives on its own


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


@pytest.mark.parametrize("saved_packed", [True, False])
def test_an_optimizer_state_of_the_other_layout_is_converted_and_without_relayout_refused_in_one_line(
    tmp_path, saved_packed
):
    """A checkpoint whose optimizer state is packed restores into a per-parameter optimizer (a TPU run resuming a
    GPU or CPU run) and the reverse, through `relayout`. Without it, a one-line ValueError names --no-resume-opt,
    which then works."""
    ckpt = TrainCheckpointer(tmp_path / "checkpoints")
    state, _ = tiny_state(seed=1, step=3)
    saved_tx = create_optimizer("rmsproptf", 0.1, eps=1e-3, pack=saved_packed)
    loaded_tx = create_optimizer("rmsproptf", 0.1, eps=1e-3, pack=not saved_packed)
    saved_opt = saved_tx.init(state.params)
    for _ in range(3):
        _, saved_opt = saved_tx.update(state.params, saved_opt, state.params)
    ckpt.save(state.replace(opt_state=saved_opt), meta={}, data_state=None)
    ckpt.close()
    ckpt = TrainCheckpointer(tmp_path / "checkpoints")  # a fresh manager, as a resuming process has
    template, _ = tiny_state(seed=2, step=0)
    template = template.replace(opt_state=loaded_tx.init(template.params))
    convert = functools.partial(relayout, params=template.params, decays=decay_groups(0.0))
    restored = ckpt.restore(3, template, relayout_opt=convert).state
    assert_trees_equal(restored.opt_state, relayout(saved_opt, state.params, decay_groups(0.0)))
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(template.opt_state)
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
        assert within(5, lambda: guard.requested(1))
        assert not guard.interrupted
    assert signal.getsignal(signal.SIGTERM) is before
    assert signal.SIGTERM not in signal.sigpending()  # consumed: leaving the guard does not kill the process


def test_a_first_ctrl_c_is_a_stop_request_and_a_second_raises_keyboard_interrupt_at_once():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with PreemptionGuard(multi_process=False) as guard:
            os.kill(os.getpid(), signal.SIGINT)
            assert within(5, lambda: guard.requested(0))
            assert guard.interrupted and guard.signal_received == signal.SIGINT
            os.kill(os.getpid(), signal.SIGINT)
            within(5, lambda: False)  # the KeyboardInterrupt comes while this waits
            pytest.fail("a second Ctrl-C did not raise KeyboardInterrupt")
    assert signal.getsignal(signal.SIGINT) is before
    assert signal.SIGINT not in signal.sigpending()


def test_processes_started_inside_the_guard_ignore_sigterm_and_ctrl_c():
    """Data-loading workers inherit the blocked signals: a signal to the whole process group (SLURM's SIGTERM, a
    terminal's Ctrl-C) stops only the training process, which then closes its workers itself."""
    with PreemptionGuard(multi_process=False):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            child.send_signal(sig)
            with pytest.raises(subprocess.TimeoutExpired):
                child.wait(1.0)
    finally:
        child.kill()
        child.wait()


def test_ctrl_c_on_one_of_two_processes_stops_both_at_the_same_step(tmp_path):
    """With several processes a Ctrl-C goes through JAX's preemption sync service, as SIGTERM does: every process
    stops at the same step (one that stopped alone would leave the others waiting in a collective)."""
    port = portpicker.pick_unused_port()
    env = dict(_env(), XLA_FLAGS=xla_flags())  # one CPU device each
    worker = [sys.executable, str(Path(__file__).with_name("preemption_worker.py")), f"127.0.0.1:{port}", "2"]
    procs = [
        subprocess.Popen(
            [*worker, str(i), str(tmp_path / "checkpoints")],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            while (line := p.stdout.readline()) and line.strip() != "ready":
                pass
        os.kill(procs[1].pid, signal.SIGINT)
        logs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert [p.returncode for p in procs] == [0, 0], logs
    stops = [[line.split() for line in log.splitlines() if line.startswith("stopped ")] for log in logs]
    assert len(stops[0]) == len(stops[1]) == 1, logs
    (_, step0, _, interrupted0), (_, step1, _, interrupted1) = stops[0][0], stops[1][0]
    assert step0 == step1 and (interrupted0, interrupted1) == ("False", "True"), logs
    assert "Traceback" not in "".join(logs)


# --- exact resume of train.py after SIGTERM, Ctrl-C and kill -9 --------------------------------------------------


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(COMPILE_CACHE))


def train_command(run_dir: Path, *extra: str) -> list[str]:
    """`python train.py RUN_FLAGS` into `run_dir`."""
    return [
        sys.executable,
        "train.py",
        *RUN_FLAGS,
        "--output",
        str(run_dir.parent),
        "--experiment",
        run_dir.name,
        *extra,
    ]


def launch(run_dir: Path, *extra: str) -> subprocess.Popen:
    """`python train.py RUN_FLAGS` into `run_dir` (stdout/stderr to files there), in its own process group."""
    run_dir.mkdir(parents=True, exist_ok=True)
    n = len(list(run_dir.glob("stdout*")))
    cmd = train_command(run_dir, *extra)
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=_env(),
        stdout=open(run_dir / f"stdout{n}", "w"),
        stderr=open(run_dir / f"stderr{n}", "w"),
        start_new_session=True,
    )


def launch_piped(run_dir: Path, reader: list[str], *extra: str) -> tuple[subprocess.Popen, subprocess.Popen]:
    """`python train.py RUN_FLAGS | READER` as a shell in a terminal runs it: both in one new process group, a job
    (a terminal's Ctrl-C reaches both, and the data workers), READER's output in `run_dir/stdoutN`, train.py's
    stderr in `stderrN`. Returns (train.py, READER)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    n = len(list(run_dir.glob("stdout*")))
    pipe = subprocess.Popen(reader, stdin=subprocess.PIPE, stdout=open(run_dir / f"stdout{n}", "w"), process_group=0)
    proc = subprocess.Popen(
        train_command(run_dir, *extra),
        cwd=REPO,
        env=_env(),
        stdout=pipe.stdin,
        stderr=open(run_dir / f"stderr{n}", "w"),
        process_group=pipe.pid,
    )
    pipe.stdin.close()  # train.py holds the only writing end: the reader's exit closes the pipe
    return proc, pipe


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


def has_checkpoint(run_dir: Path) -> bool:
    return bool(steps_saved(run_dir))


def has_data_worker(pid: int) -> bool:
    """Whether process `pid` has started a data-loading worker (a multiprocessing child: Linux's /proc). train.py
    starts its train loader's worker when it asks for its first batch, after its first stop check: a signal sent
    then arrives while that update's batch loads and its step compiles."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid and "spawn_main" in (stat.parent / "cmdline").read_text():
                return True
        except (OSError, IndexError, ValueError):  # a process that ended meanwhile
            continue
    return False


def interrupt_when(procs: dict[Path, tuple[subprocess.Popen, tuple[int, ...], Callable[[Path], bool]]]) -> set[Path]:
    """Send each process group its signals (as SLURM or a terminal does: data workers get them too), `SIGNAL_GAP_S`
    apart, as soon as `ready(run_dir)`; return the run directories signalled."""
    seen: set[Path] = set()
    deadline = time.monotonic() + TIMEOUT
    while len(seen) < len(procs) and time.monotonic() < deadline:
        for run_dir, (proc, signals, ready) in procs.items():
            if run_dir not in seen and ready(run_dir):
                for i, sig in enumerate(signals):
                    time.sleep(SIGNAL_GAP_S if i else 0)
                    os.killpg(os.getpgid(proc.pid), sig)
                seen.add(run_dir)
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
    """An uninterrupted run, a run stopped by SIGTERM and one killed with -9 after their first checkpoint, and one
    through `| tee` sent Ctrl-C while its first update loads and compiles (all at once), then the three reruns. The
    SIGTERM and Ctrl-C runs load data with a worker process (-j 1; batches do not depend on the worker count)."""
    root = tmp_path_factory.mktemp("resume")
    dirs = {name: root / name for name in ("reference", "sigterm", "kill9", "sigint")}
    workers = {"sigterm": ["-j", "1"], "sigint": ["-j", "1"]}
    procs = {name: launch(d, *workers.get(name, [])) for name, d in dirs.items() if name != "sigint"}
    procs["sigint"], tee = launch_piped(dirs["sigint"], ["tee"], *workers["sigint"])
    signalled = interrupt_when(
        {
            dirs["sigterm"]: (procs["sigterm"], (signal.SIGTERM,), has_checkpoint),
            dirs["kill9"]: (procs["kill9"], (signal.SIGKILL,), has_checkpoint),
            dirs["sigint"]: (procs["sigint"], (signal.SIGINT,), lambda _: has_data_worker(procs["sigint"].pid)),
        }
    )
    codes = {name: wait(p, dirs[name], 0) for name, p in procs.items()}
    tee.wait(TIMEOUT)
    assert codes == {"reference": 0, "sigterm": 0, "kill9": -signal.SIGKILL, "sigint": 130}, {
        n: output(d, 0)[-2000:] for n, d in dirs.items()
    }
    assert len(signalled) == 3
    reruns = {name: launch(dirs[name], *workers.get(name, [])) for name in ("sigterm", "kill9", "sigint")}
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


def test_ctrl_c_through_tee_saves_mid_epoch_exits_130_with_one_line_and_a_rerun_ends_exactly_as_before(
    resumed_runs,
):
    """The terminal's Ctrl-C reaches train.py, its data worker and tee, which exits at once: train.py finishes the
    update being compiled, saves there (mid-epoch), says on stderr how to resume, and exits 130; nothing else on
    stderr."""
    run_dir = resumed_runs["sigint"]
    err = (run_dir / "stderr0").read_text()
    assert "Traceback" not in err and "leaked" not in err and "terminate called" not in err, err[-3000:]
    prefix = "train.py: interrupted: checkpoint saved at update "
    assert err.startswith(prefix) and err.count("\n") == 1, err[-3000:]
    assert err.rstrip().endswith(f"in {run_dir.absolute()}; rerun the same command to resume"), err
    stopped_at = int(err[len(prefix) :].split()[0])
    assert stopped_at == 1  # at the end of the compilation, in the middle of epoch 0
    assert f"Resumed from {run_dir.absolute()}/checkpoints/{stopped_at}" in output(run_dir, 1)
    assert_trees_equal(final_state(run_dir), final_state(resumed_runs["reference"]))
    assert (run_dir / "summary.csv").read_text() == (resumed_runs["reference"] / "summary.csv").read_text()


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
