"""What a training run writes for people: progress, timm's summary.csv, a JSON-lines log and a PNG of the curves.

Files in the run directory (written by process 0 only; other processes get a logger with `enabled=False`):
- `summary.csv`: timm's `update_summary` rows, one per epoch: `epoch, train_loss, eval_loss, eval_top1,
  eval_top5, lr` (the eval columns are the EMA model's when EMA is on, as timm's train.py logs them).
- `log.jsonl`: one JSON object per line; `{"kind": "step", ...}` every `--log-interval` updates and
  `{"kind": "epoch", ...}` at each epoch end with both raw (`eval`) and EMA (`eval_ema`) metrics and the epoch's
  `train_time`, `eval_time` and `checkpoint_time` (seconds).
- `curves.png`: train loss and lr per update, eval top-1 (raw and EMA) per epoch; redrawn at an epoch end at most
  every `PLOT_INTERVAL_S` seconds (drawing is slow beside a short epoch), and at the end of a run or a preemption.
- `args.yaml`: the run's configuration (timm writes the same file).

On resume, rows and records after the restored point are dropped first (as timm's `trim_summary`), so a run
killed after logging an epoch it had not yet checkpointed does not log that epoch twice.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from mv2jax.io import write_atomic

SUMMARY_FILE, LOG_FILE, CURVES_FILE, ARGS_FILE = "summary.csv", "log.jsonl", "curves.png", "args.yaml"
PLOT_INTERVAL_S = 60.0


def summary_row(
    epoch: int, train_metrics: Mapping[str, float], eval_metrics: Mapping[str, float] | None, lr: float | None
) -> dict[str, Any]:
    """timm's `update_summary` row: epoch, train_<k>..., eval_<k>..., lr."""
    row: dict[str, Any] = {"epoch": epoch}
    row.update({f"train_{k}": v for k, v in train_metrics.items()})
    row.update({f"eval_{k}": v for k, v in (eval_metrics or {}).items()})
    if lr is not None:
        row["lr"] = lr
    return row


def trim_summary(path: Path, start_epoch: int) -> None:
    """timm's `trim_summary`: drop rows at or after `start_epoch` (all of them, header too, for a fresh start)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    keep = [r for r in body if r and r[0] != "epoch" and int(float(r[0])) < start_epoch]
    if len(keep) == len(body):
        return
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        if keep:
            writer.writerow(header)
            writer.writerows(keep)


def trim_log(path: Path, start_epoch: int, start_step: int) -> None:
    """Drop JSON-lines records past the restored point: epoch records of epochs >= `start_epoch`, step records of
    updates > `start_step`."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        late = rec.get("epoch", 0) >= start_epoch if rec.get("kind") == "epoch" else rec.get("step", 0) > start_step
        if not late:
            keep.append(line)
    write_atomic(path, "".join(line + "\n" for line in keep).encode())


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_curves(records: list[Mapping[str, Any]], path: Path) -> None:
    """PNG of train loss and lr per update and eval top-1 (raw, EMA) per epoch, from `log.jsonl` records."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend state
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    ax_loss.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8, alpha=0.6, label="per update")
    ax_loss.plot([r["step"] for r in epochs], [r["train_loss"] for r in epochs], "o-", label="epoch mean")
    ax_loss.set(title="train loss", xlabel="update")
    for key, label in (("eval", "raw"), ("eval_ema", "EMA")):
        points = [(r["epoch"], r[key]["top1"]) for r in epochs if r.get(key)]
        if points:
            ax_acc.plot(*zip(*points, strict=True), "o-", label=label)
    ax_acc.set(title="eval top-1 (%)", xlabel="epoch")
    ax_acc.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_lr.plot([r["step"] for r in steps], [r["lr"] for r in steps], lw=1.0)
    ax_lr.set(title="learning rate", xlabel="update")
    for ax in (ax_loss, ax_acc):
        if ax.lines:
            ax.legend()
    png = io.BytesIO()
    FigureCanvasAgg(fig).print_png(png)
    write_atomic(path, png.getvalue())


class Progress:
    """One epoch's progress: a tqdm bar (images/s, loss, lr) on a terminal, else a log line every `interval`."""

    def __init__(self, epoch: int, total: int, initial: int, images_per_step: int, interval: int, enabled: bool):
        self.epoch, self.total, self.images_per_step, self.interval = epoch, total, images_per_step, interval
        self.enabled = enabled
        use_bar = enabled and sys.stderr.isatty()
        self.bar = (
            tqdm(total=total, initial=initial, desc=f"epoch {epoch}", unit="step", dynamic_ncols=True, leave=False)
            if use_bar
            else None
        )
        self._t0, self._n0 = time.perf_counter(), initial

    def update(self, done: int, loss: float, lr: float) -> float | None:
        """`done` steps of the epoch finished; returns images/s since the last report when it reports."""
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        if done % self.interval and done != self.total:
            return None
        now = time.perf_counter()
        rate = (done - self._n0) * self.images_per_step / max(now - self._t0, 1e-9)
        self._t0, self._n0 = now, done
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4g}", lr=f"{lr:.3e}", img_s=f"{rate:.0f}")
        elif self.enabled:
            print(
                f"Train: {self.epoch} [{done:>4d}/{self.total}]  loss {loss:#.4g}  lr {lr:.3e}  {rate:.0f} img/s",
                flush=True,
            )
        return rate

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class RunLogger:
    """Writes the run's summary.csv, log.jsonl, curves.png and args.yaml (nothing when not `enabled`)."""

    def __init__(self, run_dir: Path, enabled: bool = True, log_interval: int = 50):
        self.run_dir, self.enabled, self.log_interval = Path(run_dir), enabled, log_interval
        self._last_plot = -math.inf
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    @property
    def summary_path(self) -> Path:
        return self.run_dir / SUMMARY_FILE

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_FILE

    @property
    def curves_path(self) -> Path:
        return self.run_dir / CURVES_FILE

    def start(self, config: Mapping[str, Any], start_epoch: int, start_step: int) -> None:
        """Write args.yaml; drop summary rows / log records past the (restored) starting point."""
        if not self.enabled:
            return
        write_atomic(self.run_dir / ARGS_FILE, yaml.safe_dump(dict(config), sort_keys=False).encode())
        trim_summary(self.summary_path, start_epoch)
        trim_log(self.log_path, start_epoch, start_step)

    def progress(self, epoch: int, total: int, initial: int, images_per_step: int) -> Progress:
        return Progress(epoch, total, initial, images_per_step, self.log_interval, self.enabled)

    def log(self, record: Mapping[str, Any]) -> None:
        if self.enabled:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def plot(self) -> None:
        """Redraw curves.png from log.jsonl."""
        if self.enabled:
            plot_curves(read_log(self.log_path), self.curves_path)
            self._last_plot = time.monotonic()

    def epoch_end(
        self, record: Mapping[str, Any], eval_metrics: Mapping[str, float] | None, last: bool = False
    ) -> None:
        """Append the epoch's summary.csv row (timm's columns) and JSON record; redraw curves.png if `last` or
        `PLOT_INTERVAL_S` passed since the last drawing.

        record: `{"epoch", "step", "train_loss", "lr", "eval", "eval_ema", ...}`; eval_metrics: the metrics timm
        would log (EMA when on)."""
        if not self.enabled:
            return
        row = summary_row(record["epoch"], {"loss": record["train_loss"]}, eval_metrics, record["lr"])
        new_file = not self.summary_path.exists() or self.summary_path.stat().st_size == 0
        with open(self.summary_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new_file:
                writer.writeheader()
            writer.writerow(row)
        self.log(dict(record, kind="epoch"))
        if last or time.monotonic() - self._last_plot >= PLOT_INTERVAL_S:
            self.plot()
