#!/usr/bin/env python3
"""Train a timm MobileNetV2 in JAX with timm's train.py flags: `python train.py --help`.

No arguments: a quick demo run (mobilenetv2_035 on the embedded digits dataset, a few minutes on a CPU).
Exit codes: 0 done (or stopped by SIGTERM after saving a checkpoint: rerun the same command to resume),
1 training diverged (non-finite loss; the last checkpoint is intact), 2 bad configuration, 130 interrupted (Ctrl-C).
`kill -USR1 PID` prints the stack of every thread to stderr (to see where a stuck run waits).
"""

from __future__ import annotations

import faulthandler
import signal
import sys
from collections.abc import Sequence

from mv2jax.cli import cli_main
from mv2jax.train.config import parse_config


def _metrics_text(name: str, metrics: dict | None) -> str:
    if not metrics:
        return ""
    return f"{name} top-1 {metrics['top1']:.2f}% top-5 {metrics['top5']:.2f}% loss {metrics['loss']:.4f}"


@cli_main("train.py")
def main(argv: Sequence[str] | None = None) -> int:
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    config = parse_config(argv)
    from mv2jax.train.loop import train  # after parsing: --help and flag errors need no JAX

    try:
        result = train(config)
    except FloatingPointError as e:
        print(f"train.py: stopped: {e}", file=sys.stderr, flush=True)
        return 1
    if result.preempted:
        print(
            f"SIGTERM: checkpoint saved at update {result.step} (epoch {result.epochs_done}) in "
            f"{result.run_dir}; rerun the same command to resume",
            flush=True,
        )
        return 0
    lines = [_metrics_text("raw", result.eval), _metrics_text("EMA", result.eval_ema)]
    best = f", best checkpoint: checkpoints/{result.best_step}" if result.best_step is not None else ""
    print(
        f"Done: {result.epochs_done} epochs in {result.wall_time:.0f} s; "
        + "; ".join(x for x in lines if x)
        + f" (held-out split){best}; output {result.run_dir}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    from mv2jax.host_memory import reexec_with_host_allocator
    from mv2jax.train.config import host_allocator_setting

    # no page faults on XLA:CPU's per-step buffers (faster CPU train steps); never on a GPU/TPU host
    reexec_with_host_allocator(host_allocator_setting())
    sys.exit(main())
