"""`python train.py` end to end on what a user gets wrong or interrupts: every bad input is one `train.py: error:`
line with exit code 2 that leaves what is on disk as it was; SIGTERM mid-epoch saves at the next update, not at the
epoch's end; `--resume PATH` continues exactly as rerunning the interrupted run does; `--no-resume-opt` restores the
weights, EMA and step with a fresh optimizer state."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.train.test_checkpoint import (
    REPO,
    TIMEOUT,
    assert_trees_equal,
    final_state,
    launch,
    leaves,
    output,
    steps_saved,
    wait,
)

# One long epoch: a SIGTERM sent after the first logged update is many updates away from the epoch's end.
LONG_EPOCH = 40
FLAGS = ["--epochs", "1", "--steps-per-epoch", str(LONG_EPOCH)]
# Updates that may finish between reading the log and the signal's arrival on a loaded machine (one update of
# this run takes ~0.2 s on 2 cores; the signal is seen before the next update starts).
SIGNAL_SLACK = 5


def _logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "log.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["step"] for r in records if r.get("kind") == "step"]


def _files(root: Path) -> dict[str, str]:
    """Every file under `root` with its content hash: what a failed command must leave as it was."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _one_error_line(run_dir: Path, n: int) -> str:
    err = (run_dir / f"stderr{n}").read_text()
    messages = [line for line in err.splitlines() if line.startswith("train.py:")]
    assert len(messages) == 1 and messages[0].startswith("train.py: error: "), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    return messages[0]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> SimpleNamespace:
    """A run sent SIGTERM (to its process group, as a scheduler does) as soon as its first update is logged."""
    run_dir = tmp_path_factory.mktemp("cli") / "interrupted"
    proc = launch(run_dir, *FLAGS)
    deadline = time.monotonic() + TIMEOUT
    while not _logged_steps(run_dir) and time.monotonic() < deadline:
        assert proc.poll() is None, output(run_dir, 0)[-3000:]
        time.sleep(0.02)
    logged = max(_logged_steps(run_dir), default=None)
    os.killpg(proc.pid, signal.SIGTERM)
    assert wait(proc, run_dir, 0) == 0, output(run_dir, 0)[-3000:]
    assert logged is not None
    text = output(run_dir, 0)
    assert "SIGTERM: checkpoint saved at update " in text, text[-3000:]
    stopped = int(text.split("SIGTERM: checkpoint saved at update ")[1].split()[0])
    return SimpleNamespace(dir=run_dir, logged=logged, stopped=stopped, ckpt=run_dir / "checkpoints" / str(stopped))


def test_sigterm_mid_epoch_saves_at_the_next_update_not_at_the_epoch_end(interrupted):
    # A run that stopped only at epoch boundaries would have saved at update LONG_EPOCH.
    assert interrupted.logged < interrupted.stopped <= interrupted.logged + SIGNAL_SLACK < LONG_EPOCH
    assert steps_saved(interrupted.dir) == [interrupted.stopped]
    assert "Traceback" not in output(interrupted.dir, 0)


@pytest.fixture(scope="module")
def resumed(interrupted, tmp_path_factory) -> SimpleNamespace:
    """The interrupted run finished twice at once: rerun in (a copy of) its directory, and `--resume PATH` into a
    new one."""
    before = _files(interrupted.dir)
    root = tmp_path_factory.mktemp("resumed")
    rerun_dir, resumed_dir = root / "rerun", root / "resumed"
    shutil.copytree(interrupted.dir, rerun_dir)
    procs = {
        rerun_dir: launch(rerun_dir, *FLAGS),  # same command, same directory: resumes by itself
        resumed_dir: launch(resumed_dir, *FLAGS, "--resume", str(interrupted.ckpt)),
    }
    n = {rerun_dir: 1, resumed_dir: 0}
    for d, p in procs.items():
        assert wait(p, d, n[d]) == 0, output(d, n[d])[-3000:]
    assert _files(interrupted.dir) == before  # --resume only reads
    return SimpleNamespace(rerun=rerun_dir, dir=resumed_dir)


def test_resume_path_continues_exactly_as_rerunning_the_interrupted_run(interrupted, resumed):
    assert f"Resumed from {interrupted.ckpt} at epoch 0, update {interrupted.stopped}" in output(resumed.dir, 0)
    assert steps_saved(resumed.dir) == steps_saved(resumed.rerun)[-1:] == [LONG_EPOCH]
    assert_trees_equal(final_state(resumed.dir, LONG_EPOCH), final_state(resumed.rerun, LONG_EPOCH))


def _validate(run_dir: Path, name: str, *flags: str, devices: int = 1) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    cmd = [sys.executable, "-m", "mv2jax.validate", "--model", "mobilenetv2_035", "--num-classes", "10"]
    cmd += ["--checkpoint", str(run_dir / "checkpoints" / str(LONG_EPOCH)), "--dataset", "digits"]
    cmd += ["--img-size", "32", "-b", "64", *flags]
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=open(run_dir / f"{name}.out", "w"),
        stderr=open(run_dir / f"{name}.err", "w"),
    )


def test_validate_on_4_devices_with_use_ema_and_amp_scores_the_runs_ema(resumed):
    """`python -m mv2jax.validate` on train.py's checkpoint: on one device in float32 its --use-ema result is the
    EMA eval train.py logged (summation order apart); on 4 devices with --amp (bf16) and worker processes it counts
    every held-out image once, scores the EMA weights (far closer to the EMA eval than to the raw one), differs
    from float32 (bf16 is in use), and leaves no shared memory behind."""
    record = [json.loads(line) for line in (resumed.dir / "log.jsonl").read_text().splitlines()][-1]
    ema, raw = record["eval_ema"], record["eval"]
    procs = {
        "fp32": _validate(resumed.dir, "fp32", "--use-ema", "-j", "0"),
        "amp4": _validate(resumed.dir, "amp4", "--use-ema", "--amp", "-j", "2", devices=4),
    }
    results = {}
    for name, proc in procs.items():
        assert proc.wait(TIMEOUT) == 0, (resumed.dir / f"{name}.err").read_text()[-3000:]
        err = (resumed.dir / f"{name}.err").read_text()
        assert "Traceback" not in err and "leaked" not in err, err[-3000:]
        results[name] = json.loads((resumed.dir / f"{name}.out").read_text().split("--result\n", 1)[1])
        assert results[name]["count"] == 359, results[name]  # the digits' held-out split, each image once
    assert "on 4 device(s)" in (resumed.dir / "amp4.err").read_text()
    fp32, amp4 = results["fp32"], results["amp4"]
    # float32: the same weights and images as train.py's eval; only the order of float32 sums may differ
    assert fp32["loss"] == pytest.approx(ema["loss"], rel=1e-5)
    assert abs(fp32["top1"] - ema["top1"]) <= 100 / 359 + 1e-4  # at most one near-tie broken the other way
    assert 0 < abs(amp4["loss"] - fp32["loss"]) < 0.1 * abs(ema["loss"] - raw["loss"])


def test_optimizer_of_another_layout_is_one_error_line_and_no_resume_opt_starts_a_fresh_one(interrupted, tmp_path):
    """--opt momentum cannot take RMSpropTF's state: one line naming --no-resume-opt, nothing written. With it,
    the run restores weights, EMA and step with momentum's fresh (zero) state; `--steps-per-epoch` at the saved
    update makes the resumed run's only work the epoch end, which saves a checkpoint to compare."""
    before = _files(interrupted.dir)
    refused, fresh = tmp_path / "refused", tmp_path / "fresh"
    ckpt = ["--resume", str(interrupted.ckpt), "--opt", "momentum"]
    assert wait(launch(refused, *FLAGS, *ckpt), refused, 0) == 2, output(refused, 0)[-3000:]
    line = _one_error_line(refused, 0)
    assert "optimizer state does not fit" in line and "--no-resume-opt" in line
    assert steps_saved(refused) == []

    at = ["--epochs", "1", "--steps-per-epoch", str(interrupted.stopped)]
    assert wait(launch(fresh, *at, *ckpt, "--no-resume-opt"), fresh, 0) == 0, output(fresh, 0)[-3000:]
    assert steps_saved(fresh) == [interrupted.stopped]
    source, restored = final_state(interrupted.dir, interrupted.stopped), final_state(fresh, interrupted.stopped)
    assert_trees_equal(restored["state"], source["state"])  # weights, BatchNorm statistics, EMA, step, rng
    opt = leaves(restored["opt_state"])
    counts = {k: v for k, v in opt.items() if "count" in k}
    assert counts and all(int(v) == interrupted.stopped for v in counts.values())  # the schedule goes on
    buffers = {k: v for k, v in opt.items() if np.issubdtype(v.dtype, np.floating)}  # not the packing offsets
    assert buffers and all(not np.any(v) for v in buffers.values())  # momentum's fresh trace is zero
    assert any(np.any(v) for v in leaves(source["opt_state"]).values() if np.issubdtype(v.dtype, np.floating))
    assert _files(interrupted.dir) == before


def test_a_packed_optimizer_state_resumes_per_parameter_as_a_tpu_run_would(interrupted, tmp_path):
    """The interrupted run (CPU: packed optimizer state) resumed with `--opt-layout per-param`, the layout a TPU
    run has: the saved state is converted, every buffer value kept, and the resumed run saves it per parameter
    (`--steps-per-epoch` at the saved update: the resumed run's only work is the epoch end's checkpoint)."""
    moved = tmp_path / "moved"
    at = ["--epochs", "1", "--steps-per-epoch", str(interrupted.stopped), "--resume", str(interrupted.ckpt)]
    assert wait(launch(moved, *at, "--opt-layout", "per-param"), moved, 0) == 0, output(moved, 0)[-3000:]
    assert steps_saved(moved) == [interrupted.stopped]
    source, restored = final_state(interrupted.dir, interrupted.stopped), final_state(moved, interrupted.stopped)
    assert_trees_equal(restored["state"], source["state"])

    def buffers(opt_state) -> dict[str, np.ndarray]:
        return {k: v for k, v in leaves(opt_state).items() if np.issubdtype(v.dtype, np.floating)}

    packed, per_param = buffers(source["opt_state"]), buffers(restored["opt_state"])
    assert all("decay']" in k for k in packed) and not any("decay']" in k for k in per_param)
    assert len(per_param) > len(packed)
    values = lambda b: np.sort(np.concatenate([v.ravel() for v in b.values()]))  # noqa: E731
    np.testing.assert_array_equal(values(per_param), values(packed))
    assert np.any(values(packed))


def test_each_bad_input_is_one_error_line_exit_2_and_nothing_on_disk_changes(interrupted, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        "no_data_dir": (["--dataset", "folder"], "needs --data-dir"),
        "empty_data_dir": (["--dataset", "folder", "--data-dir", str(empty)], "no .png/.jpg/.jpeg images under"),
        "no_checkpoint": (["--resume", str(empty)], f"--resume {empty}: no checkpoint there"),
        "other_model": (
            ["--resume", str(interrupted.ckpt), "--model", "mobilenetv2_050"],
            "is a checkpoint of another network (model_name 'mobilenetv2_035' there, 'mobilenetv2_050' now)",
        ),
    }
    before = _files(interrupted.dir)
    procs = {name: launch(tmp_path / name, *FLAGS, *flags) for name, (flags, _) in cases.items()}
    for name, proc in procs.items():
        run_dir = tmp_path / name
        assert wait(proc, run_dir, 0) == 2, (name, output(run_dir, 0)[-3000:])
        line = _one_error_line(run_dir, 0)
        assert cases[name][1] in line, (name, line)
        # run_dir holds only the command's output files: no run directory was made there
        assert not (run_dir / "checkpoints").exists() and not (run_dir / "args.yaml").exists(), name
    assert _files(interrupted.dir) == before
    assert list(empty.iterdir()) == []
