#!/usr/bin/env python3
"""Train a timm MobileNetV2 in JAX with timm's train.py flags: `python train.py --help`.

No dataset (no --data-dir or --dataset): a quick demo run (mobilenetv2_035 on the embedded digits dataset, a few
minutes on a CPU), changed by any flags given (`python train.py --epochs 30`).
Exit codes: 0 done (or stopped by SIGTERM after saving a checkpoint), 1 training diverged (non-finite loss; the last
checkpoint is intact), 2 bad configuration, 3 `--compile-only TARGET`: a step does not fit in the target chip's
memory, 130 interrupted (Ctrl-C). A first Ctrl-C stops at the next update (after
a compilation, an eval or a checkpoint write in progress), saves a checkpoint there and names it in one line on
stderr; a second stops at once without saving. After either signal, rerun the same command to resume exactly.
`kill -USR1 PID` prints the stack of every thread to stderr (to see where a stuck run waits).
"""

from __future__ import annotations

import faulthandler
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from mv2jax.cli import EXIT_INTERRUPTED, cli_main
from mv2jax.train.config import TrainConfig, check_paths, parse_config


def _metrics_text(name: str, metrics: dict | None) -> str:
    if not metrics:
        return ""
    return f"{name} top-1 {metrics['top1']:.2f}% top-5 {metrics['top5']:.2f}% loss {metrics['loss']:.4f}"


def _resume_hint(config: TrainConfig, run_dir: Path | None = None) -> str:
    """How to go on from the run's last checkpoint: the same command, unless it names another starting point."""
    changes = []
    if config.resume:
        changes.append(f"with --resume {run_dir or '<run directory>'} in place of --resume {config.resume}")
    if config.start_epoch is not None:
        changes.append("without --start-epoch")
    return " ".join(["rerun the same command", *changes, "to resume"])


@cli_main("train.py")
def main(argv: Sequence[str] | None = None) -> int:
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    config = parse_config(argv)
    if config.compile_only:  # nothing is read or trained: the steps are compiled for the target and reported
        from mv2jax.accel.compile_only import run_compile_only

        return run_compile_only(config)
    check_paths(config)
    from mv2jax.train.loop import train  # after parsing: --help and flag errors need no JAX

    try:
        result = train(config)
    except FloatingPointError as e:
        print(f"train.py: stopped: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C
        hint = _resume_hint(config)
        print(f"train.py: interrupted: stopped at once; {hint} from the last checkpoint", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    if result.preempted:
        saved = f"checkpoint saved at update {result.step} (epoch {result.epochs_done}) in {result.run_dir}"
        hint = _resume_hint(config, result.run_dir)
        if result.interrupted:
            print(f"train.py: interrupted: {saved}; {hint}", file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED
        print(f"SIGTERM: {saved}; {hint}", flush=True)
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
