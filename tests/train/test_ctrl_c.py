"""Ctrl-C on the command lines, sent as a terminal sends it (SIGINT to the whole process group: the command, its
data-loading worker processes and the reader of its piped output): train.py in a terminal interrupted twice stops
at once; train.py whose pipe reader has gone still saves its checkpoint; validate stops in one line.
Each exits 130 without a traceback, and no worker leaves shared memory behind. (A single Ctrl-C through `| tee`,
with an exact resume, is in test_checkpoint.py beside SIGTERM and kill -9.)"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.train.test_checkpoint import (
    REPO,
    TIMEOUT,
    _env,
    interrupt_when,
    launch_piped,
    steps_saved,
    train_command,
    wait,
)

# One long epoch: a Ctrl-C after the first logged update is many updates away from the epoch's end.
LONG_EPOCH = 40
LONG_EPOCH_FLAGS = ["--epochs", "1", "--steps-per-epoch", str(LONG_EPOCH)]
# What a worker process killed by the terminal's SIGINT, or one left running, would print.
NOISE = ("Traceback", "KeyboardInterrupt", "leaked", "resource_tracker", "terminate called", "Exception ignored")


def _logged_update(run_dir: Path) -> bool:
    """Whether the run logged an update (in log.jsonl: its stdout may go nowhere)."""
    path = run_dir / "log.jsonl"
    return path.exists() and any(json.loads(line).get("kind") == "step" for line in path.read_text().splitlines())


def _launch_in_terminal(run_dir: Path, *extra: str) -> tuple[subprocess.Popen, threading.Thread]:
    """train.py in a new process group with stdout and stderr on a pseudo-terminal, as in a terminal window; what it
    shows is copied to `run_dir/stdout0` (by the returned thread, until train.py exits)."""
    run_dir.mkdir(parents=True)
    (run_dir / "stderr0").write_text("")
    master, terminal = pty.openpty()
    proc = subprocess.Popen(
        train_command(run_dir, *extra),
        cwd=REPO,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
    )
    os.close(terminal)

    def copy() -> None:
        with open(run_dir / "stdout0", "wb") as f:
            while True:
                try:
                    data = os.read(master, 1 << 16)
                except OSError:  # EIO: the terminal's other side is closed
                    data = b""
                if not data:
                    break
                f.write(data)
                f.flush()
        os.close(master)

    copier = threading.Thread(target=copy, daemon=True)
    copier.start()
    return proc, copier


def _stderr(run_dir: Path) -> str:
    err = (run_dir / "stderr0").read_text()
    assert not any(text in err for text in NOISE), err[-3000:]
    return err


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> SimpleNamespace:
    """Two train.py runs at once, each sent Ctrl-C after its first logged update: one in a terminal twice, and one
    `| head -1` (gone after the first line) once, in an epoch of `LONG_EPOCH` updates."""
    root = tmp_path_factory.mktemp("ctrl_c")
    twice, headless = root / "twice", root / "headless"
    procs = {
        twice: _launch_in_terminal(twice, "-j", "1"),
        headless: launch_piped(headless, ["head", "-1"], "-j", "1", *LONG_EPOCH_FLAGS),
    }
    signalled = interrupt_when(
        {
            twice: (procs[twice][0], (signal.SIGINT, signal.SIGINT), _logged_update),
            headless: (procs[headless][0], (signal.SIGINT,), _logged_update),
        }
    )
    codes = {d: wait(proc, d, 0) for d, (proc, _) in procs.items()}
    procs[twice][1].join(TIMEOUT)
    procs[headless][1].wait(TIMEOUT)
    assert signalled == {twice, headless}
    return SimpleNamespace(twice=twice, headless=headless, codes=codes)


def test_a_second_ctrl_c_stops_at_once_with_one_line_and_exit_130(runs):
    """In a terminal: what it shows ends with one line saying how to go on, and nothing a worker would print."""
    shown = (runs.twice / "stdout0").read_bytes().decode().replace("\r\n", "\n")
    assert not any(text in shown for text in NOISE), shown[-3000:]
    assert runs.codes[runs.twice] == 130, shown[-3000:]
    lines = [line for line in shown.split("\n") if line.strip()]
    assert (
        [line for line in lines if line.startswith("train.py:")]
        == lines[-1:]
        == ["train.py: interrupted: stopped at once; rerun the same command to resume from the last checkpoint"]
    ), shown[-3000:]
    # no half-written checkpoint: only committed step directories (orbax commits a save by renaming its directory)
    leftovers = [p.name for p in (runs.twice / "checkpoints").iterdir() if not p.name.isdigit()]
    assert leftovers == []


def test_ctrl_c_after_the_pipe_reader_has_gone_still_saves_and_exits_130(runs):
    """`| head -1` exits after the first line: every later write to stdout fails (EPIPE). The run goes on
    regardless, and a Ctrl-C still saves its checkpoint."""
    err = _stderr(runs.headless)
    assert runs.codes[runs.headless] == 130, err[-3000:]
    assert len(err.splitlines()) == 1 and err.startswith("train.py: interrupted: checkpoint saved at update "), err
    stopped = int(err.split("checkpoint saved at update ")[1].split()[0])
    assert steps_saved(runs.headless) == [stopped] and stopped < LONG_EPOCH  # mid-epoch, at the next update
    assert (runs.headless / "stdout0").read_text().count("\n") == 1  # what head printed


def test_validate_stops_on_ctrl_c_in_one_line_and_its_worker_quietly(runs):
    """validate with a worker process, on the checkpoint the interrupted run saved, sent Ctrl-C once it has logged
    a batch (hundreds remain): one line, exit 130, the worker stopped without a traceback or leaked memory."""
    ckpt = runs.headless / "checkpoints" / str(steps_saved(runs.headless)[-1])
    cmd = [sys.executable, "-m", "mv2jax.validate", "--checkpoint", str(ckpt), "--dataset", "digits", "-b", "1"]
    proc = subprocess.Popen(
        [*cmd, "-j", "1", "--log-freq", "1", "--img-size", "32", "--conv-impl", "xla"],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stderr is not None
    lines = []
    while (line := proc.stderr.readline()) and not line.startswith("Test: ["):
        lines.append(line)
    assert line, "".join(lines)[-3000:]
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, err[-3000:]
    # progress lines of the batches finished before the signal arrived may come first; nothing else may
    *progress, last = err.splitlines()
    assert last == "mv2jax.validate: interrupted", err[-3000:]
    assert all(line.startswith("Test: [") for line in progress), err[-3000:]
    assert out == ""
