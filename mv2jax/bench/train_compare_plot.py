"""`timm_train_compare`'s per-epoch curves of both sides in one PNG: held-out top-1 of the raw and the EMA weights
and the train loss, each side's mean over its finished runs as a line with a band of ± one sample std, and one light
line per seed."""

from __future__ import annotations

import io
import statistics
from collections.abc import Sequence
from pathlib import Path

from mv2jax.bench.train_compare_runs import SIDES, Result
from mv2jax.io import write_atomic

PANELS = (
    ("raw_top1", "held-out top-1, raw weights (%)"),
    ("ema_top1", "held-out top-1, EMA weights (%)"),
    ("train_loss", "train loss (epoch mean)"),
)
COLORS = {"mv2jax": "tab:blue", "timm": "tab:orange"}


def _points(run: Result, key: str) -> tuple[list[int], list[float]]:
    pairs = [(e.epoch, getattr(e, key)) for e in run.epochs if getattr(e, key) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def mean_band(runs: Sequence[Result], key: str) -> tuple[list[int], list[float], list[float]]:
    """(epochs, mean, sample std) of `key` (an `Epoch` field) per epoch over `runs` (std 0 below 2 values)."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for epoch, value in zip(*_points(run, key), strict=True):
            by_epoch.setdefault(epoch, []).append(value)
    epochs = sorted(by_epoch)
    means = [statistics.fmean(by_epoch[e]) for e in epochs]
    stds = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in epochs]
    return epochs, means, stds


def plot_curves(results: Sequence[Result], path: Path) -> None:
    """Write the PNG of the finished runs (exit code 0) in `results` to `path`, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend state
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(15, 4.2), layout="constrained")
    for ax, (key, title) in zip(fig.subplots(1, len(PANELS)), PANELS, strict=True):
        for side in SIDES:
            runs = [r for r in results if r.side == side and r.returncode == 0 and r.epochs]
            if not runs:
                continue
            color = COLORS[side]
            for run in runs:
                ax.plot(*_points(run, key), color=color, lw=0.7, alpha=0.25)
            epochs, means, stds = mean_band(runs, key)
            ax.plot(epochs, means, color=color, lw=2, label=f"{side} mean ± std ({len(runs)} seeds)")
            low = [m - s for m, s in zip(means, stds, strict=True)]
            high = [m + s for m, s in zip(means, stds, strict=True)]
            ax.fill_between(epochs, low, high, color=color, alpha=0.2, lw=0)
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.lines:
            ax.legend()
    png = io.BytesIO()
    FigureCanvasAgg(fig).print_png(png)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, png.getvalue())
