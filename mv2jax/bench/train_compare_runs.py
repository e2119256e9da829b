"""The runs of `timm_train_compare`: the shared data and initial weights, each side's command, and what a finished
run leaves behind read back as one `Result` per (seed, side).

Per epoch, both sides' summary.csv (timm's `update_summary` columns `epoch, train_loss, eval_loss, eval_top1,
eval_top5, lr`, eval the EMA's with `--model-ema`) give the train loss, the EMA top-1 and the lr; the raw model's
top-1 comes from mv2jax's log.jsonl (`eval.top1` of each epoch record) and from timm's stdout (the last batch of
each 'Test:' validation, whose bracketed figure is the running average over the held-out split).

A finished run (any exit code) leaves `result.json` beside its stdout: its `Result` and the exact command. Rerunning
the comparison with the same `--out` reuses each run whose recorded command is the one it would run, so an
interrupted comparison resumes at the first run that had not finished; a changed recipe, path or interpreter
retrains.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mv2jax.io import write_atomic
from mv2jax.train.config import QUICK_RUN, _as_flags
from mv2jax.train.logging import LOG_FILE, SUMMARY_FILE, read_log

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = "compare"
RESULT_FILE = "result.json"
NUM_CLASSES = 10  # the digits
SIDES = ("mv2jax", "timm")
TIMM_EXTRA = ("--num-classes", str(NUM_CLASSES), "--device", "cpu")
# timm's validate() log line; the number in brackets after Acc@1 is the running average (final on the last batch).
TEST_LINE = re.compile(r"^.*?Test( \(EMA\))?: \[\s*(\d+)/(\d+)\].*?Acc@1:\s*[\d.]+\s*\(\s*([\d.]+)\)")
# torch's thread count sets the order of its reductions, and this training is chaotic (a rounding difference grows
# to a percent of the loss within a few updates), so a single-threaded timm run repeats bit for bit; on a shared CPU
# a multi-threaded torch also slows down many times over. Where the user's environment sets one, theirs wins.
TIMM_THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclasses.dataclass(frozen=True)
class Epoch:
    """One epoch of a run: mean train loss, held-out top-1 (%) of the raw and the EMA weights, lr (mean over
    parameter groups). None where the run did not record it."""

    epoch: int
    train_loss: float | None
    raw_top1: float | None
    ema_top1: float | None
    lr: float | None


@dataclasses.dataclass(frozen=True)
class Result:
    """One run: its seed and side, its epochs, the wall time (s) of the whole command (interpreter start, imports and
    compilation included) and its exit code."""

    seed: int
    side: str
    epochs: tuple[Epoch, ...]
    wall_s: float
    returncode: int

    @property
    def raw_top1(self) -> float | None:
        return self.epochs[-1].raw_top1 if self.epochs else None

    @property
    def ema_top1(self) -> float | None:
        return self.epochs[-1].ema_top1 if self.epochs else None

    @property
    def ema_gain(self) -> float | None:
        """EMA top-1 minus raw top-1 after the last epoch (points)."""
        raw, ema = self.raw_top1, self.ema_top1
        return None if raw is None or ema is None else ema - raw

    def to_json(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        row.update(raw_top1=self.raw_top1, ema_top1=self.ema_top1, ema_gain=self.ema_gain)
        return row

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Result:
        epochs = tuple(Epoch(**e) for e in row["epochs"])
        return cls(row["seed"], row["side"], epochs, row["wall_s"], row["returncode"])


def export_digits(root: Path) -> dict[str, int]:
    """Write mv2jax's digits splits (as `python train.py` builds them) as `root/<split>/<class>/<i>.png`."""
    from mv2jax.data.datasets import create_dataset

    counts = {}
    for split in ("train", "validation"):
        source = create_dataset("digits", split=split, image_size=QUICK_RUN["img_size"])
        folder = root / split
        if folder.exists():
            shutil.rmtree(folder)
        for i in range(len(source)):
            img, label = source[i]
            (folder / str(label)).mkdir(parents=True, exist_ok=True)
            img.save(folder / str(label) / f"{i}.png")
        counts[split] = len(source)
    return counts


def export_initial_weights(seed: int, path: Path) -> Path:
    """mv2jax's initial weights for `seed`, as `python train.py --seed SEED` draws them, as a timm safetensors file
    (a strict `--initial-checkpoint` for both sides). Before `--head-init-scale`: both train.py's apply it after
    loading the checkpoint."""
    from safetensors.numpy import save

    import mv2jax
    from mv2jax.convert import mv2jax_to_timm

    model = mv2jax.create_model(QUICK_RUN["model"], num_classes=NUM_CLASSES, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, save(mv2jax_to_timm(model)))
    return path


def quick_run_flags() -> list[str]:
    """`python train.py` with no arguments, as explicit flags (any argument turns the QUICK_RUN defaults off)."""
    return _as_flags(QUICK_RUN)


def timm_flags(data_dir: Path) -> list[str]:
    """timm train.py flags for the same recipe: QUICK_RUN without `dataset`, plus the data folder and TIMM_EXTRA."""
    return _as_flags({k: v for k, v in QUICK_RUN.items() if k != "dataset"}) + [
        "--data-dir",
        str(data_dir),
        *TIMM_EXTRA,
    ]


def timm_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The timm side's environment: `environ` (default: this process's) with `TIMM_THREADS` where it sets none."""
    env = dict(os.environ if environ is None else environ)
    for name, value in TIMM_THREADS.items():
        if not env.get(name):
            env[name] = value
    return env


def run_logged(cmd: list[str], log: Path, cwd: Path, env: Mapping[str, str] | None = None) -> tuple[float, int]:
    """Run `cmd` (in `env`, default this process's environment) with stdout+stderr to `log`; (wall s, exit code)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=env).returncode
    wall = time.perf_counter() - start
    print(f"  -> exit {rc} after {wall:.0f} s (log {log})", flush=True)
    return wall, rc


def _float(row: dict[str, str], key: str) -> float | None:
    return float(row[key]) if row.get(key) else None


def summary_epochs(summary_csv: Path, raw_top1: list[float]) -> tuple[Epoch, ...]:
    """A run's epochs from its summary.csv and the raw model's top-1 per epoch (in epoch order)."""
    if not summary_csv.exists():
        return ()
    with open(summary_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    return tuple(
        Epoch(
            int(float(row["epoch"])),
            _float(row, "train_loss"),
            raw_top1[i] if i < len(raw_top1) else None,
            _float(row, "eval_top1"),
            _float(row, "lr"),
        )
        for i, row in enumerate(rows)
    )


def read_mv2jax_run(run_dir: Path) -> tuple[Epoch, ...]:
    """The epochs of an mv2jax train.py run directory (summary.csv, and log.jsonl for the raw top-1)."""
    records = sorted((r for r in read_log(run_dir / LOG_FILE) if r.get("kind") == "epoch"), key=lambda r: r["epoch"])
    return summary_epochs(run_dir / SUMMARY_FILE, [r["eval"]["top1"] for r in records if r.get("eval")])


def timm_raw_top1(log: Path) -> list[float]:
    """The raw model's top-1 per epoch from timm's stdout: each non-EMA 'Test:' line of a final batch."""
    raws = []
    for line in log.read_text(errors="replace").splitlines() if log.exists() else ():
        m = TEST_LINE.match(line)
        if m and not m.group(1) and m.group(2) == m.group(3):
            raws.append(float(m.group(4)))
    return raws


def read_timm_run(run_dir: Path, stdout_log: Path) -> tuple[Epoch, ...]:
    """The epochs of a timm train.py run directory (summary.csv) and its stdout (the raw top-1)."""
    return summary_epochs(run_dir / SUMMARY_FILE, timm_raw_top1(stdout_log))


def _seed_output(seed: int, init: Path | None, base: Path) -> list[str]:
    init_flags = ["--initial-checkpoint", str(init)] if init else []
    return [*init_flags, "--seed", str(seed), "--output", str(base), "--experiment", EXPERIMENT]


def finished_result(base: Path, cmd: list[str]) -> Result | None:
    """The `Result` recorded in `base` by a finished run of exactly `cmd`, else None."""
    try:
        row = json.loads((base / RESULT_FILE).read_text())
        return Result.from_json(row) if row.get("command") == cmd else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _run_once(
    seed: int, side: str, base: Path, cmd: list[str], cwd: Path, read, env: Mapping[str, str] | None = None
) -> Result:
    """The recorded result of `cmd` in `base`, or run it (in a clean `base`: an existing run directory would be
    resumed by mv2jax, and timm would write to '<experiment>-1') and record it."""
    done = finished_result(base, cmd)
    if done is not None:
        print(f"reusing the finished {side} run of seed {seed} ({base / RESULT_FILE})", flush=True)
        return done
    shutil.rmtree(base, ignore_errors=True)
    wall, rc = run_logged(cmd, base / "stdout.log", cwd, env)
    result = Result(seed, side, read(base), wall, rc)
    write_atomic(base / RESULT_FILE, json.dumps({**result.to_json(), "command": cmd}, indent=1).encode())
    return result


def run_mv2jax(seed: int, out: Path, init: Path | None = None) -> Result:
    """mv2jax's `python train.py` with the QUICK_RUN flags, `--seed`, `--output` and `--initial-checkpoint init`."""
    base = out / "mv2jax" / f"seed{seed}"
    cmd = [sys.executable, str(REPO / "train.py"), *quick_run_flags(), *_seed_output(seed, init, base)]
    return _run_once(seed, "mv2jax", base, cmd, REPO, lambda b: read_mv2jax_run(b / EXPERIMENT))


def run_timm(seed: int, out: Path, train_py: Path, init: Path | None = None) -> Result:
    """timm's train.py with the equivalent flags (and `--initial-checkpoint init`), in `timm_env()`."""
    base = out / "timm" / f"seed{seed}"
    cmd = [sys.executable, str(train_py), *timm_flags(out / "data"), *_seed_output(seed, init, base)]
    return _run_once(
        seed, "timm", base, cmd, train_py.parent, lambda b: read_timm_run(b / EXPERIMENT, b / "stdout.log"), timm_env()
    )


def lr_mismatch(a: Result, b: Result) -> float | None:
    """Largest relative difference of the per-epoch lr columns (None if the epoch counts differ or lr is missing)."""
    pairs = [(x.lr, y.lr) for x, y in zip(a.epochs, b.epochs, strict=False)]
    if not pairs or len(a.epochs) != len(b.epochs):
        return None
    mismatch = 0.0
    for x, y in pairs:
        if x is None or y is None:
            return None
        mismatch = max(mismatch, abs(x - y) / max(abs(x), abs(y), 1e-12))
    return mismatch
