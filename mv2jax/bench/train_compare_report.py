"""`timm_train_compare`'s results as a JSON report and a BENCHMARKS.md section.

The report: `date`, `command`, `machine` (`mv2jax.bench.common.machine_info`, with `load_after`), `config` (the
recipe, the seeds, the reference script, whether both sides started from the same weights, the image counts),
`runs` (one row per seed and side: `Result.to_json()`, plus `lr_mismatch` on timm's rows), `sides` (per side and
metric: n, mean and sample std of the finished runs) and `differences` (per metric, mv2jax minus timm: Welch's
interval, t and degrees of freedom). Metrics, in held-out top-1 points after the last epoch: `raw`, `ema`, and
`ema_gain` (EMA minus raw, per run, then compared across sides).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mv2jax.bench.markdown import versions
from mv2jax.bench.train_compare_runs import SIDES, Result, lr_mismatch
from mv2jax.bench.welch import summarize, welch
from mv2jax.io import write_atomic

METRICS = {"raw": "raw", "ema": "EMA", "ema_gain": "EMA gain over raw"}
_ATTRS = {"raw": "raw_top1", "ema": "ema_top1", "ema_gain": "ema_gain"}


def metric_values(results: Sequence[Result], side: str, metric: str) -> list[float]:
    """`metric` ('raw', 'ema' or 'ema_gain') of the runs of `side` that finished (exit code 0) and recorded it."""
    values = (getattr(r, _ATTRS[metric]) for r in results if r.side == side and r.returncode == 0)
    return [v for v in values if v is not None]


def _side_summary(results: Sequence[Result], side: str) -> dict[str, Any]:
    summary = {m: dataclasses.asdict(summarize(metric_values(results, side, m))) for m in METRICS}
    summary["wall_s"] = dataclasses.asdict(summarize([r.wall_s for r in results if r.side == side]))
    return summary


def differences(results: Sequence[Result], level: float = 0.95) -> dict[str, dict[str, Any] | None]:
    """Per metric, mv2jax minus timm with its Welch interval at `level` (None below 2 finished runs a side)."""
    out = {}
    for m in METRICS:
        interval = welch(metric_values(results, "mv2jax", m), metric_values(results, "timm", m), level)
        out[m] = None if interval is None else dataclasses.asdict(interval)
    return out


def _run_rows(results: Sequence[Result]) -> list[dict[str, Any]]:
    mv2jax_runs = {r.seed: r for r in results if r.side == "mv2jax"}
    rows = []
    for r in results:
        row = r.to_json()
        if r.side == "timm" and r.seed in mv2jax_runs:
            row["lr_mismatch"] = lr_mismatch(mv2jax_runs[r.seed], r)
        rows.append(row)
    return rows


def build_report(
    results: Sequence[Result], *, date: str, command: str, machine: dict[str, Any], config: dict[str, Any]
) -> dict[str, Any]:
    """The JSON report of `results` (see the module docstring)."""
    return {
        "date": date,
        "command": command,
        "machine": machine,
        "config": config,
        "runs": _run_rows(results),
        "sides": {side: _side_summary(results, side) for side in SIDES},
        "differences": differences(results),
    }


def results_of(report: dict[str, Any]) -> list[Result]:
    """The runs of a report, as `Result`s."""
    return [Result.from_json(row) for row in report["runs"]]


def write_report(path: Path, report: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(report, indent=2) + "\n").encode())


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _load(values: list[float] | None) -> str:
    return "-" if not values else ", ".join(f"{v:.2f}" for v in values)


def _mean_std(s: dict[str, Any]) -> str:
    return f"{_num(s['mean'], '.2f')} ± {_num(s['std'], '.2f')} ({s['n']})"


def _difference_row(report: dict[str, Any], metric: str) -> str:
    sides, d = report["sides"], report["differences"][metric]
    head = f"| {METRICS[metric]} | {_mean_std(sides['mv2jax'][metric])} | {_mean_std(sides['timm'][metric])} |"
    if d is None:
        return f"{head} | | | |"
    interval = f"[{d['low']:+.2f}, {d['high']:+.2f}]"
    return f"{head} {d['difference']:+.2f} | {interval} | {_num(d['t'], '+.2f')} | {_num(d['df'], '.1f')} |"


def _seed_rows(report: dict[str, Any]) -> list[str]:
    runs: dict[int, dict[str, dict[str, Any]]] = {}
    for row in report["runs"]:
        runs.setdefault(row["seed"], {})[row["side"]] = row
    lines = []
    for seed, by_side in runs.items():
        cells = []
        for key in ("top1", "wall_s", "returncode"):
            parts = []
            for side in SIDES:
                r = by_side.get(side)
                if r is None:
                    parts.append("-")
                elif key == "top1":
                    parts.append(f"{_num(r['raw_top1'], '.2f')} / {_num(r['ema_top1'], '.2f')}")
                else:
                    parts.append(_num(r[key], ".0f"))
            cells += parts if key == "top1" else [" / ".join(parts)]
        lr = by_side.get("timm", {}).get("lr_mismatch")
        lines.append(f"| {seed} | {' | '.join(cells)} | {_num(lr, '.1e')} |")
    return lines


def _recipe_line(config: dict[str, Any]) -> str:
    recipe = config["recipe"]
    reference = (
        "the stand-in `mv2jax/bench/timm_reference_train.py`"
        if config["reference"] == "stand-in"
        else f"timm's train.py (sha256 {config.get('timm_train_py_sha256', '?')[:12]})"
    )
    init = (
        "the same on both sides (mv2jax's for each seed, as `--initial-checkpoint`)"
        if config["same_init"]
        else "each side its own"
    )
    held_out = config["images"]["validation"]
    threads = config.get("timm_threads")  # absent from reports written before the timm side's threads were set
    threads_text = f"; timm's side with {' '.join(f'{k}={v}' for k, v in threads.items())}" if threads else ""
    return (
        f"`python train.py` (QUICK_RUN: {recipe['model']}, digits at {recipe['img_size']}x{recipe['img_size']}, "
        f"{recipe['epochs']} epochs) against {reference}; seeds {', '.join(map(str, config['seeds']))}; initial "
        f"weights {init}; {config['images']['train']} train and {held_out} held-out images (1 image = "
        f"{100 / held_out:.2f} points){threads_text}"
    )


def markdown_section(report: dict[str, Any], title: str) -> str:
    """`report` as a BENCHMARKS.md section headed `title (date)`: the mean ± std (n finished runs) of each side,
    mv2jax minus timm with its 95% Welch interval, then one row per seed."""
    m, date = report["machine"], report.get("date", "undated")
    lines = [
        f"## {title} ({date[:10]})",
        "",
        f"- Date: {date}",
        f"- Machine: {m['cpu_model']}, {m['cores_available']} cores available; load average before/after: "
        f"{_load(m.get('load_avg_1_5_15'))} / {_load(m.get('load_after'))}",
        f"- Versions: Python {m['python']}, {versions(m)}",
        f"- Command: `{report.get('command', 'not recorded')}`",
        f"- Recipe: {_recipe_line(report['config'])}",
        "",
        "| held-out top-1 (%) | mv2jax mean ± std (n) | timm mean ± std (n) | mv2jax - timm | 95% interval (Welch) "
        "| Welch t | df |",
        "|---|---|---|---|---|---|---|",
        *(_difference_row(report, metric) for metric in METRICS),
        "",
        "| seed | mv2jax raw / EMA | timm raw / EMA | wall s (mv2jax / timm) | exit (mv2jax / timm) | lr diff |",
        "|---|---|---|---|---|---|",
        *_seed_rows(report),
        "",
        "- lr diff: the largest relative difference of the two sides' per-epoch lr (0: the same schedule).",
        "- curves.png beside report.json: held-out top-1 (raw, EMA) and train loss per epoch, mean ± std per side.",
    ]
    return "\n".join(lines) + "\n"
