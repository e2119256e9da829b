"""`python train.py` (no arguments) against timm's train.py: same data, same recipe, EMA top-1 side by side.

Run: `python -m mv2jax.bench.timm_train_compare --out DIR [--timm-train-py PATH/train.py] [--seeds 0 1 2]`.
timm's train.py ships in neither timm's wheel nor its sdist; without `--timm-train-py` the timm side runs
`timm_reference_train.py`, a stand-in that takes train.py's code path for a single-process CPU run with timm's own
library pieces (create_loader, create_optimizer_v2, create_scheduler_v2, ModelEmaV3, LabelSmoothingCrossEntropy).

What it proves: that mv2jax's no-argument demo run (`QUICK_RUN` in mv2jax/train/config.py) learns as well as timm's
own training script does with the same recipe on the same images. Both sides get
- the same data: the embedded digits train / held-out splits, exported exactly as mv2jax's `Digits` source builds
  them (same split, same already-upscaled 32x32 RGB images, lossless PNG) to `DIR/data/{train,validation}/<class>/`;
  mv2jax reads the embedded set directly, timm reads the ImageFolder tree;
- the same flags: timm's flag list is generated from `QUICK_RUN` itself (mv2jax's flag names are timm's), so the
  two cannot drift apart; only the flags in `TIMM_EXTRA` are added.
The table holds, per seed and side, the last epoch's raw and EMA top-1 on the held-out split, the wall time of the
whole command (interpreter start, imports and JIT compilation included) and, on the timm rows, the largest
relative difference between the two sides' per-epoch `lr` columns of summary.csv (0 means the same schedule).

Flags that cannot be matched exactly (the rest are passed with mv2jax's values):
- `--dataset digits`: timm has no such dataset; timm gets `--data-dir DIR/data` (the exported ImageFolder) and
  `--num-classes 10` (mv2jax's default is the dataset's class count, timm's the model's 1000).
- `--device cpu`: timm's default is cuda; mv2jax uses JAX's default backend (CPU here). No `--amp` on either side.
- `--seed`: same number, but the two frameworks draw different random numbers from it (initial weights, shuffling,
  augmentation), so runs agree in distribution, not bit for bit; compare several seeds.
- `--workers 1`: same count; mv2jax's grain worker and timm's DataLoader worker differ in how they seed
  augmentation (mv2jax: per example from (seed, epoch, position); timm: per worker).
- checkpoints: mv2jax saves every epoch (orbax), the stand-in saves none; this only affects wall time.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mv2jax.cli import CliParser, cli_main
from mv2jax.train.config import QUICK_RUN, _as_flags

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = "compare"
TIMM_EXTRA = ("--num-classes", "10", "--device", "cpu")
# timm's validate() log line; the number in brackets after Acc@1 is the running average (final on the last batch).
TEST_LINE = re.compile(r"^.*?Test( \(EMA\))?: \[\s*(\d+)/(\d+)\].*?Acc@1:\s*[\d.]+\s*\(\s*([\d.]+)\)")


@dataclass(frozen=True)
class Result:
    """One run: held-out top-1 (%) of the raw and EMA weights after the last epoch, wall time (s), lr per epoch."""

    seed: int
    side: str
    raw_top1: float | None
    ema_top1: float | None
    wall_s: float
    lrs: tuple[float, ...]
    returncode: int


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


def run_logged(cmd: list[str], log: Path, cwd: Path) -> tuple[float, int]:
    """Run `cmd` with stdout+stderr to `log`; (wall seconds, return code)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd).returncode
    wall = time.perf_counter() - start
    print(f"  -> exit {rc} after {wall:.0f} s (log {log})", flush=True)
    return wall, rc


def read_summary(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def last_float(rows: list[dict[str, str]], key: str) -> float | None:
    return float(rows[-1][key]) if rows and rows[-1].get(key) else None


def run_mv2jax(seed: int, out: Path) -> Result:
    """mv2jax's `python train.py` with the QUICK_RUN flags, `--seed` and `--output`."""
    base = out / "mv2jax" / f"seed{seed}"
    shutil.rmtree(base, ignore_errors=True)  # an existing run directory would be resumed, not retrained
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        *quick_run_flags(),
        "--seed",
        str(seed),
        "--output",
        str(base),
        "--experiment",
        EXPERIMENT,
    ]
    wall, rc = run_logged(cmd, base / "stdout.log", REPO)
    run_dir = base / EXPERIMENT
    rows = read_summary(run_dir / "summary.csv")
    raw = None
    log = run_dir / "log.jsonl"
    if log.exists():
        epochs = [r for r in map(json.loads, log.read_text().splitlines()) if r.get("kind") == "epoch"]
        raw = epochs[-1]["eval"]["top1"] if epochs else None
    return Result(seed, "mv2jax", raw, last_float(rows, "eval_top1"), wall, tuple(float(r["lr"]) for r in rows), rc)


def parse_timm_raw(log: Path) -> float | None:
    """The raw model's top-1 of the last epoch: the last non-EMA 'Test:' line of its final batch."""
    raw = None
    for line in log.read_text(errors="replace").splitlines():
        m = TEST_LINE.match(line)
        if m and not m.group(1) and m.group(2) == m.group(3):
            raw = float(m.group(4))
    return raw


def run_timm(seed: int, out: Path, train_py: Path) -> Result:
    """timm's train.py with the equivalent flags; its summary.csv eval columns are the EMA's (--model-ema)."""
    base = out / "timm" / f"seed{seed}"
    shutil.rmtree(base, ignore_errors=True)  # timm would otherwise write to '<experiment>-1'
    cmd = [
        sys.executable,
        str(train_py),
        *timm_flags(out / "data"),
        "--seed",
        str(seed),
        "--output",
        str(base),
        "--experiment",
        EXPERIMENT,
    ]
    log = base / "stdout.log"
    wall, rc = run_logged(cmd, log, train_py.parent)
    rows = read_summary(base / EXPERIMENT / "summary.csv")
    return Result(
        seed, "timm", parse_timm_raw(log), last_float(rows, "eval_top1"), wall, tuple(float(r["lr"]) for r in rows), rc
    )


def lr_mismatch(a: Result, b: Result) -> float | None:
    """Largest relative difference of the per-epoch lr columns (None if the epoch counts differ)."""
    if not a.lrs or len(a.lrs) != len(b.lrs):
        return None
    return max(abs(x - y) / max(abs(x), abs(y), 1e-12) for x, y in zip(a.lrs, b.lrs, strict=True))


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def table(results: list[Result]) -> str:
    """The comparison table, one row per (seed, side), then the mean of each side."""
    lines = [f"{'seed':>4}  {'side':<6}  {'raw top-1':>9}  {'EMA top-1':>9}  {'wall s':>6}  {'lr diff':>7}  exit"]
    by_seed: dict[int, dict[str, Result]] = {}
    for r in results:
        by_seed.setdefault(r.seed, {})[r.side] = r
    for r in results:
        other = by_seed[r.seed].get("mv2jax")
        diff = lr_mismatch(other, r) if r.side == "timm" and other else None
        lines.append(
            f"{r.seed:>4}  {r.side:<6}  {fmt(r.raw_top1, '9.2f')}  {fmt(r.ema_top1, '9.2f')}  "
            f"{r.wall_s:>6.0f}  {fmt(diff, '7.1e') if r.side == 'timm' else '':>7}  {r.returncode}"
        )
    for side in ("mv2jax", "timm"):
        rs = [r for r in results if r.side == side]
        raws = [r.raw_top1 for r in rs if r.raw_top1 is not None]
        emas = [r.ema_top1 for r in rs if r.ema_top1 is not None]
        mean = lambda xs: sum(xs) / len(xs) if xs else None
        lines.append(
            f"{'mean':>4}  {side:<6}  {fmt(mean(raws), '9.2f')}  {fmt(mean(emas), '9.2f')}  "
            f"{fmt(mean([r.wall_s for r in rs]), '6.0f')}"
        )
    return "\n".join(lines)


@cli_main("mv2jax.bench.timm_train_compare")
def main(argv: list[str] | None = None) -> int:
    parser = CliParser("mv2jax.bench.timm_train_compare", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="work directory (data, runs, logs)")
    parser.add_argument(
        "--timm-train-py",
        type=Path,
        default=Path(__file__).with_name("timm_reference_train.py"),
        help="timm's train.py (not shipped in timm's packages; default: the stand-in built from "
        "timm's library, mv2jax/bench/timm_reference_train.py)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--sides", nargs="+", default=["mv2jax", "timm"], choices=["mv2jax", "timm"])
    args = parser.parse_args(argv)
    if "timm" in args.sides and not args.timm_train_py.is_file():
        parser.error(f"--timm-train-py {args.timm_train_py}: no such file")
    out = args.out.resolve()
    counts = export_digits(out / "data")
    print(f"digits exported to {out / 'data'}: {counts}", flush=True)
    results: list[Result] = []
    for seed in args.seeds:
        if "mv2jax" in args.sides:
            results.append(run_mv2jax(seed, out))
        if "timm" in args.sides:
            results.append(run_timm(seed, out, args.timm_train_py.resolve()))
    text = table(results)
    print(text)
    (out / "table.txt").write_text(text + "\n")
    return 0 if all(r.returncode == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
