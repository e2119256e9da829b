"""`python train.py` (no arguments) against timm's train.py: same data, same recipe, same initial weights, N seeds a
side, raw and EMA top-1 compared with Welch's 95% confidence interval.

Run: `python -m mv2jax.bench.timm_train_compare --out DIR [--timm-train-py PATH/train.py] [--num-seeds N | --seeds S
...] [--no-same-init] [--markdown BENCHMARKS.md --title TEXT]`; `--from-json DIR/report.json` renders a saved run
again without training. timm's train.py ships in neither timm's wheel nor its sdist; without `--timm-train-py` the
timm side runs `timm_reference_train.py`, a stand-in that takes train.py's code path for a single-process CPU run
with timm's own library pieces (create_loader, create_optimizer_v2, create_scheduler_v2, ModelEmaV3,
LabelSmoothingCrossEntropy).

The 16-seed comparison against timm's real train.py (32 training runs of the demo, about an hour on 2 CPU cores):

    git clone https://github.com/huggingface/pytorch-image-models /tmp/timm-repo   # its train.py imports timm
    python -m mv2jax.bench.timm_train_compare --out /tmp/compare16 --timm-train-py /tmp/timm-repo/train.py \\
        --num-seeds 16 --markdown BENCHMARKS.md --title "The demo against timm's train.py, 16 seeds"

What it proves: that mv2jax's no-argument demo run (`QUICK_RUN` in mv2jax/train/config.py) learns as well as timm's
own training script does with the same recipe on the same images. Both sides get
- the same data: the embedded digits train / held-out splits, exported exactly as mv2jax's `Digits` source builds
  them (same split, same already-upscaled 32x32 RGB images, lossless PNG) to `DIR/data/{train,validation}/<class>/`;
  mv2jax reads the embedded set directly, timm reads the ImageFolder tree;
- the same flags: timm's flag list is generated from `QUICK_RUN` itself (mv2jax's flag names are timm's), so the
  two cannot drift apart; only the flags in `TIMM_EXTRA` are added;
- the same initial weights (`--same-init`, the default): mv2jax's initial weights for each seed, exported as a timm
  safetensors file `DIR/init/seed<S>.safetensors` and passed to both sides as `--initial-checkpoint` (a strict
  load; both train.py's scale the classifier by `--head-init-scale` after it), so the seed-to-seed spread of the
  initialisation is shared rather than added to the difference.

Outputs in DIR: `report.json` (every run's per-epoch figures, each side's mean and sample std, the differences with
their intervals, the command, the date and the versions: `mv2jax.bench.train_compare_report`), `report.md` (the
BENCHMARKS.md section, also printed and appended to `--markdown FILE`), `curves.png` (per-epoch held-out top-1 raw
and EMA, and train loss, both sides overlaid) and each run's directory and stdout under `DIR/{mv2jax,timm}/`.
Rerunning the same command resumes: each finished run records its result (`result.json`) and is reused when its
command is unchanged.
Compared, per side, over the runs that exit 0: the last epoch's raw top-1, EMA top-1 and the EMA gain over raw
(EMA minus raw, per run); the difference mv2jax - timm with its 95% Welch interval (Welch-Satterthwaite degrees of
freedom, Student's t quantile). Exit code 1 if any run failed.

Flags that cannot be matched exactly (the rest are passed with mv2jax's values):
- `--dataset digits`: timm has no such dataset; timm gets `--data-dir DIR/data` (the exported ImageFolder) and
  `--num-classes 10` (mv2jax's default is the dataset's class count, timm's the model's 1000).
- `--device cpu`: timm's default is cuda; mv2jax uses JAX's default backend (CPU here). No `--amp` on either side.
- `--seed`: same number, but the two frameworks draw different random numbers from it (shuffling, augmentation,
  dropout; the initial weights too with `--no-same-init`), so runs agree in distribution, not bit for bit.
- `--workers 1`: same count; mv2jax's grain worker and timm's DataLoader worker differ in how they seed
  augmentation (mv2jax: per example from (seed, epoch, position); timm: per worker).
- checkpoints: mv2jax saves every epoch (orbax), the stand-in saves none; this only affects wall time.

timm's side runs with torch single-threaded: `OMP_NUM_THREADS=1 MKL_NUM_THREADS=1` (`TIMM_THREADS`), unless the
environment sets them (then its values are passed on, and recorded in report.json). torch's thread count changes the
order of its reductions, and this training is chaotic, so the same seed and init land points apart at another thread
count; single-threaded, a timm run repeats bit for bit, and on a shared CPU it does not slow down many times over
from oversubscription.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from mv2jax.bench.common import machine_info
from mv2jax.bench.markdown import append_markdown
from mv2jax.bench.train_compare_plot import plot_curves
from mv2jax.bench.train_compare_report import build_report, markdown_section, results_of, write_report
from mv2jax.bench.train_compare_runs import (
    SIDES,
    TIMM_THREADS,
    Result,
    export_digits,
    export_initial_weights,
    run_mv2jax,
    run_timm,
    timm_env,
)
from mv2jax.cli import CliParser, cli_main
from mv2jax.io import write_atomic
from mv2jax.train.config import QUICK_RUN

PROG = "mv2jax.bench.timm_train_compare"
STAND_IN = Path(__file__).with_name("timm_reference_train.py")
DEFAULT_TITLE = "The demo against timm's train.py"


def build_parser() -> CliParser:
    parser = CliParser(PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="work directory (data, runs, logs, report, curves)")
    parser.add_argument(
        "--timm-train-py",
        type=Path,
        default=STAND_IN,
        help="timm's train.py (not shipped in timm's packages; default: the stand-in built from "
        "timm's library, mv2jax/bench/timm_reference_train.py)",
    )
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--num-seeds", type=int, default=8, metavar="N", help="seeds 0..N-1 (default: 8)")
    seeds.add_argument("--seeds", type=int, nargs="+", metavar="S", help="these seeds instead of --num-seeds")
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    parser.add_argument(
        "--same-init",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start both sides from mv2jax's initial weights for each seed (--initial-checkpoint; default: on)",
    )
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="append the report as a section of FILE")
    parser.add_argument("--title", default=DEFAULT_TITLE, help="the --markdown section's heading (the date is added)")
    parser.add_argument(
        "--from-json", type=Path, metavar="REPORT", help="render a saved report.json (curves, markdown); no training"
    )
    return parser


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_comparison(
    seeds: list[int], sides: list[str], train_py: Path, same_init: bool, out: Path
) -> tuple[list[Result], dict[str, Any]]:
    """Export the data (and the initial weights), train each seed on each side; (results, the report's config)."""
    counts = export_digits(out / "data")
    print(f"digits exported to {out / 'data'}: {counts}", flush=True)
    results = []
    for seed in seeds:
        init = export_initial_weights(seed, out / "init" / f"seed{seed}.safetensors") if same_init else None
        if "mv2jax" in sides:
            results.append(run_mv2jax(seed, out, init))
        if "timm" in sides:
            results.append(run_timm(seed, out, train_py, init))
    config = {
        "recipe": dict(QUICK_RUN),
        "seeds": seeds,
        "sides": sides,
        "same_init": same_init,
        "reference": "stand-in" if train_py == STAND_IN.resolve() else "timm train.py",
        "timm_train_py": str(train_py),
        "timm_train_py_sha256": _sha256(train_py) if train_py.is_file() else None,
        "images": counts,
        "timm_threads": {name: timm_env()[name] for name in TIMM_THREADS},
    }
    return results, config


@cli_main(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_seeds < 1:
        parser.error(f"--num-seeds must be >= 1, got {args.num_seeds}")
    out = args.out.resolve()
    if args.from_json:
        report = json.loads(args.from_json.read_text())
    else:
        if "timm" in args.sides and not args.timm_train_py.is_file():
            parser.error(f"--timm-train-py {args.timm_train_py}: no such file")
        date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        command = shlex.join(["python", "-m", PROG, *(sys.argv[1:] if argv is None else argv)])
        machine = machine_info()
        seeds = args.seeds if args.seeds is not None else list(range(args.num_seeds))
        results, config = run_comparison(seeds, args.sides, args.timm_train_py.resolve(), args.same_init, out)
        machine["load_after"] = list(os.getloadavg())
        report = build_report(results, date=date, command=command, machine=machine, config=config)
        write_report(out / "report.json", report)
    results = results_of(report)
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(results, out / "curves.png")
    section = markdown_section(report, args.title)
    write_atomic(out / "report.md", section.encode())
    print(section, flush=True)
    if args.markdown:
        append_markdown(args.markdown, section)
    return 0 if all(r.returncode == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
