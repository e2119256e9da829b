"""Subprocess of test_checkpoint.py: one of two JAX processes polling `PreemptionGuard.requested(step)` at every
step, as the training loop does, until it says stop; prints `stopped STEP interrupted BOOL`.

usage: preemption_worker.py COORDINATOR_ADDRESS NUM_PROCESSES PROCESS_ID CHECKPOINT_DIR
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mv2jax.train.mesh import initialize_distributed  # noqa: E402

MAX_STEPS = 2000
STEP_S = 0.02


def main(address: str, num_processes: str, process_id: str, directory: str) -> None:
    initialize_distributed(address, int(num_processes), int(process_id))
    from mv2jax.train.checkpoint import PreemptionGuard, TrainCheckpointer

    ckpt = TrainCheckpointer(directory, best_metric=None)
    with PreemptionGuard() as guard:
        guard.manager = ckpt.manager
        print("ready", flush=True)
        for step in range(MAX_STEPS):
            if guard.requested(step):
                print(f"stopped {step} interrupted {guard.interrupted}", flush=True)
                break
            time.sleep(STEP_S)
        else:
            print("not stopped", flush=True)
    ckpt.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
