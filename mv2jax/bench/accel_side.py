"""The accelerator phases: train.py's RA train step (`--amp` for 'bf16', conv_impl 'xla') compiled by XLA:TPU or
XLA:GPU for a slice or GPU this machine does not have (`mv2jax.accel`), beside the textbook Flax reference
(`mv2jax.bench.reference_flax`) compiled in the same process, for the same global batch, shardings and donation.

One phase per target and precision (variant 'TARGET/PRECISION', e.g. 'v5e:2x2/bf16'). Its row holds both programs'
per-chip analyses (flops and HBM bytes per image, temporaries, fusions, the roofline img/s from the chip's
published peaks), mv2jax over the reference, and, with `AccelBench.largest_batch`, the largest per-chip batch that
fits (a second compile gives a line of memory against the batch; its crossing with the chip's memory is compiled
and refined by the secant). The phase needs libtpu or jax's CUDA plugin; without them its row is 'skipped' with the pip
command.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from mv2jax.bench.common import BenchConfig, peak_rss_mib

PRECISIONS = ("bf16", "fp32")  # 'bf16': train.py --amp (bf16 compute, BatchNorm and residual in f32)
INTERPRETER_HINT = (
    "or give the benchmark an interpreter that has it: --accel-python PYTHON (CI's: .ci/accel/bin/python)"
)


def phase_variant(target: str, precision: str) -> str:
    return f"{target}/{precision}"


def split_variant(variant: str) -> tuple[str, str]:
    target, _, precision = variant.rpartition("/")
    return target, precision


def _mv2jax_program(cfg: BenchConfig, precision: str, batch: int, devices: list[Any]):
    """train.py's RA train step (`mv2jax.lowering.ra_config`) for `cfg.model` at `cfg.img_size`, `batch` per chip."""
    from mv2jax.accel.steps import build_steps, offline_config
    from mv2jax.lowering import ra_config

    config = ra_config(cfg.model, amp=precision == "bf16", batch_size=batch, img_size=cfg.img_size, conv_impl="xla")
    config, _ = offline_config(dataclasses.replace(config, num_classes=cfg.num_classes))
    return build_steps(config, devices).train


def _reference_program(cfg: BenchConfig, precision: str, batch: int, devices: list[Any]):
    from mv2jax.accel.steps import Program
    from mv2jax.bench.reference_flax import make_reference_step
    from mv2jax.train.mesh import create_mesh

    ref = make_reference_step(
        create_mesh(devices),
        model=cfg.model,
        batch_per_device=batch,
        img_size=cfg.img_size,
        amp=precision == "bf16",
        num_classes=cfg.num_classes,
    )
    return Program("reference", ref.step, ref.args, batch)


def largest_batch(measure: Callable[[int], Any], first: Any) -> tuple[Any, list[int]]:
    """(the compiled step at the largest per-chip batch that fits, or None; the batches compiled to find it),
    from `first`, the step compiled at the phase's batch. A second compile (twice the batch, or half when XLA
    refuses that outright) gives the line; its crossing with the chip's memory is compiled and refined by the
    secant (`mv2jax.accel.compile_only.refine_largest`)."""
    from mv2jax.accel.compile_only import largest_fitting_batch, refine_largest

    tried: list[int] = []

    def counted(batch: int):
        tried.append(batch)
        return measure(batch)

    if not first.fits:
        return largest_fitting_batch(counted, first), tried
    known = [first, counted(2 * first.batch_per_device)]
    if known[-1].out_of_memory and first.batch_per_device > 1:
        known.append(counted(first.batch_per_device // 2))
    return refine_largest(counted, known), tried


def _ratios(ours: dict[str, Any], ref: dict[str, Any] | None) -> dict[str, float | None] | None:
    """mv2jax over the reference, per chip and step (the same batch: per image alike)."""
    if ref is None:
        return None
    keys = ("hbm_bytes", "temp_bytes", "fusions", "flops")
    return {k: (ours[k] / ref[k] if ours.get(k) is not None and ref.get(k) else None) for k in keys}


def _largest_record(found: Any, tried: list[int], chip: Any) -> dict[str, Any]:
    return {
        "batch_per_chip": found.batch_per_device if found else None,
        "total_bytes": found.total_bytes if found else None,
        "roofline_images_per_s": found.roofline(chip) if found else None,
        "batches_compiled": tried,
    }


def accel_phase(cfg: BenchConfig, variant: str) -> list[dict[str, Any]]:
    """One target and precision: both programs compiled, their analyses per chip and mv2jax over the reference."""
    from mv2jax.accel import targets
    from mv2jax.accel.compile_only import GPU_COST_NOTE, compile_program

    target_name, precision = split_variant(variant)
    batch = cfg.accel.batch_per_chip
    base = {"side": "mv2jax", "mode": "accel", "variant": variant, "batch_size": batch}
    base |= {"target": target_name, "precision": precision, "model": cfg.model, "img_size": cfg.img_size}
    if precision not in PRECISIONS:
        raise ValueError(f"accel phase {variant!r}: precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    t0 = time.perf_counter()
    target = targets.parse_target(target_name)
    try:
        versions = targets.check_compiler(target.platform)
    except targets.TargetError as e:
        return [base | {"status": "skipped", "error": f"{e}; {INTERPRETER_HINT}"}]
    targets.prepare_process()
    devices = target.devices()
    chip = target.chip
    ours = compile_program(_mv2jax_program(cfg, precision, batch, devices), target, len(devices))
    ref = None
    if cfg.accel.reference:
        ref = compile_program(_reference_program(cfg, precision, batch, devices), target, len(devices))
    row = base | {
        "status": "ok",
        "platform": target.platform,
        "chip": dataclasses.asdict(chip),
        "devices": len(devices),
        "hosts": targets.hosts(devices),
        "versions": versions,
        "num_classes": cfg.num_classes,
        "mv2jax": ours.to_dict(chip),
        "reference": ref.to_dict(chip) if ref else None,
        "notes": [GPU_COST_NOTE] if target.platform == "cuda" else [],
    }
    row["mv2jax_over_reference"] = _ratios(row["mv2jax"], row["reference"])
    if cfg.accel.largest_batch:

        def measure(b: int):
            return compile_program(_mv2jax_program(cfg, precision, b, devices), target, len(devices))

        found, tried = largest_batch(measure, ours)
        row["largest_batch"] = _largest_record(found, tried, chip)
    return [row | {"phase_compile_s": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib()}]
