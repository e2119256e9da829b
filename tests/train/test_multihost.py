"""Two JAX processes on localhost (gloo CPU collectives, one device each) train together, each feeding half of
every global batch; they must end with the parameters, BN statistics and EMA of one process training on the
whole batches (with the same 2 BatchNorm stat groups, i.e. per-process statistics as timm's per-GPU BN)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import portpicker
import pytest

from tests.train.devices import TOL_F64, xla_flags
from tests.train.multihost_worker import train
from tests.train.reference import rel_errors, worst

pytestmark = pytest.mark.numerics

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("multihost_worker.py")
NUM_PROCESSES = 2
TIMEOUT_S = 300


def launch(tmp_path: Path) -> list[tuple[subprocess.Popen, Path]]:
    port = portpicker.pick_unused_port()
    env = dict(os.environ, XLA_FLAGS=xla_flags(), JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))  # 1 device each
    procs = []
    for pid in range(NUM_PROCESSES):
        out = tmp_path / f"process{pid}.npz"
        cmd = [sys.executable, str(WORKER), f"127.0.0.1:{port}", str(NUM_PROCESSES), str(pid), str(out)]
        procs.append(
            (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), out)
        )
    return procs


def wait(procs: list[tuple[subprocess.Popen, Path]]) -> None:
    try:
        logs = [p.communicate(timeout=TIMEOUT_S)[0] for p, _ in procs]
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for (p, _), log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-4000:]


def read(path: Path) -> tuple[dict, dict, float]:
    z = np.load(path)
    model = {k.removeprefix("model/"): z[k] for k in z.files if k.startswith("model/")}
    ema = {k.removeprefix("ema/"): z[k] for k in z.files if k.startswith("ema/")}
    return model, ema, float(z["loss"])


def test_two_processes_train_like_one(tmp_path):
    procs = launch(tmp_path)
    try:
        with jax.enable_x64(True):  # the one-process reference, while the two processes run
            ref, ref_ema, ref_loss = train(stat_groups=NUM_PROCESSES)
    finally:
        wait(procs)
    for _, out in procs:
        model, ema, loss = read(out)
        model_err, ema_err = worst(rel_errors(model, ref)), worst(rel_errors(ema, ref_ema))
        print(f"{out.name}: params+BN {model_err}, EMA {ema_err}, last loss {loss} vs {ref_loss}")
        assert model_err[1] < TOL_F64 and ema_err[1] < TOL_F64
        assert model["bn1.weight"].dtype == np.float64
