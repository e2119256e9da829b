"""`train.py ... --compile-only TARGET`: train.py's train and eval steps compiled by XLA:TPU or XLA:GPU for a slice
or GPU host this machine does not have, and what the compiler says about them per chip: memory against the chip's
capacity, flops and HBM bytes per image, a roofline throughput, kernels (fusions, cuDNN calls), compile time.

When a step does not fit, the largest per-chip batch that does is found from two memory analyses (memory grows
about linearly with the batch), compiled at the line's crossing with the capacity and refined by the secant.
`compile_check` returns the whole report as a dict (the benchmark reuses it); `run_compile_only` is train.py's
entry: it prints the report and returns the exit code.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from mv2jax.accel import targets
from mv2jax.accel.hlo import HloStats, hlo_stats, lowered_flops
from mv2jax.cli import EXIT_DOES_NOT_FIT
from mv2jax.train.config import TrainConfig

GPU_COST_NOTE = (
    "XLA:GPU's compiled cost analysis is empty without a device: flops are XLA's count on the lowered module "
    "(global batch, divided by the devices), HBM bytes the operands and results of the optimized module's kernels "
    "(fusions and custom calls of the entry computation)"
)
REFINE_COMPILES = 4  # compiles after the two that give the first line, at most
REFINE_WITHIN = 0.02  # a batch that fits within 2% of the largest is the answer


@dataclasses.dataclass(frozen=True)
class StepReport:
    """One compiled program, per device: memory (bytes), cost (flops and HBM bytes of one step), kernels."""

    name: str
    batch_per_device: int
    capacity: int
    compile_s: float
    out_of_memory: str = ""  # XLA's refusal to compile, when the step cannot fit at all
    argument_bytes: int = 0
    output_bytes: int = 0
    alias_bytes: int = 0
    temp_bytes: int = 0
    code_bytes: int = 0
    flops: float | None = None
    hbm_bytes: float | None = None
    hlo: HloStats | None = None

    @property
    def total_bytes(self) -> int:
        """Peak memory of the step: arguments, outputs not written over donated arguments, temporaries, code."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def fits(self) -> bool:
        return not self.out_of_memory and self.total_bytes <= self.capacity

    def roofline(self, chip: targets.Chip) -> float | None:
        """Images/s per device at the chip's peak: batch / max(flops / peak, bytes / bandwidth)."""
        if not self.flops or not self.hbm_bytes:
            return None
        return self.batch_per_device / max(self.flops / chip.peak_bf16_flops, self.hbm_bytes / chip.memory_bandwidth)

    def to_dict(self, chip: targets.Chip) -> dict[str, Any]:
        per_image = lambda x: None if x is None else x / self.batch_per_device  # noqa: E731
        out = {
            "step": self.name,
            "batch_per_device": self.batch_per_device,
            "fits": self.fits,
            "out_of_memory": self.out_of_memory,
            "compile_s": self.compile_s,
            "state_bytes": self.argument_bytes,
            "temp_bytes": self.temp_bytes,
            "total_bytes": self.total_bytes,
            "capacity_bytes": self.capacity,
            "flops": self.flops,
            "hbm_bytes": self.hbm_bytes,
            "flops_per_image": per_image(self.flops),
            "hbm_bytes_per_image": per_image(self.hbm_bytes),
            "roofline_images_per_s": self.roofline(chip),
        }
        return out | (self.hlo.to_dict() if self.hlo else {})


def compile_program(program, target: targets.Target, devices: int) -> StepReport:
    """Compile one `mv2jax.accel.steps.Program` for the target and read XLA's analyses of it."""
    import jax

    start = time.perf_counter()
    lowered = program.fn.trace(*program.args).lower()
    common = dict(name=program.name, batch_per_device=program.batch_per_device, capacity=target.memory_capacity)
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return StepReport(**common, compile_s=time.perf_counter() - start, out_of_memory=targets._first_line(e))
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    stats = hlo_stats(compiled.as_text())
    if target.platform == "tpu":
        cost = compiled.cost_analysis() or {}
        flops, hbm = cost.get("flops"), cost.get("bytes accessed")
    else:
        total = lowered_flops(lowered)
        flops, hbm = (total / devices if total else None), float(stats.kernel_bytes)
    return StepReport(
        **common,
        compile_s=compile_s,
        argument_bytes=memory.argument_size_in_bytes,
        output_bytes=memory.output_size_in_bytes,
        alias_bytes=memory.alias_size_in_bytes,
        temp_bytes=memory.temp_size_in_bytes,
        code_bytes=memory.generated_code_size_in_bytes,
        flops=flops,
        hbm_bytes=hbm,
        hlo=stats,
    )


def largest_fitting_batch(measure: Callable[[int], StepReport], failed: StepReport) -> StepReport | None:
    """The compiled step at the largest per-device batch that fits, below `failed`'s; None if not even 1 does.

    Two memory analyses (the failed one when XLA compiled it, else halved batches) give a line; its crossing with
    the capacity is compiled and refined (`refine_largest`)."""
    known = [failed]
    batch = failed.batch_per_device
    while len([r for r in known if not r.out_of_memory]) < 2 and batch > 1:
        batch //= 2
        known.append(measure(batch))
    return refine_largest(measure, known)


def batch_at_capacity(a: StepReport, b: StepReport) -> int | None:
    """The per-device batch where the line through two compiled steps' memory meets the capacity (rounded down);
    None when memory does not grow with the batch."""
    slope = (a.total_bytes - b.total_bytes) / (a.batch_per_device - b.batch_per_device)
    if slope <= 0:
        return None
    return int((a.capacity - (a.total_bytes - slope * a.batch_per_device)) // slope)


def _secant_guess(known: list[StepReport]) -> int | None:
    """The batch where the line through the two analysed steps nearest the capacity (in bytes) meets it."""
    points = sorted((r for r in known if not r.out_of_memory), key=lambda r: abs(r.capacity - r.total_bytes))
    for other in points[1:]:
        if other.batch_per_device != points[0].batch_per_device:
            return batch_at_capacity(points[0], other)
    return None


def refine_largest(measure: Callable[[int], StepReport], known: list[StepReport]) -> StepReport | None:
    """The largest fitting step found from `known` (compiled steps, at least one of them analysed) with at most
    REFINE_COMPILES more compiles.

    Each guess is the secant's: where the line through the two analysed steps nearest the capacity meets it, kept
    inside the bracket (the largest batch known to fit, the smallest known not to; the midpoint when the secant
    falls outside). Memory is close to linear in the batch, so the first guess usually lands within a few percent;
    XLA's layouts and rematerialisation make it less than linear at large batches, and the refinement climbs from
    there; where memory even fell as the batch grew (no crossing above the fit), it scales the fit's temporaries to
    the capacity. It stops when the bracket (or, with none above, the next step up) is within REFINE_WITHIN of the
    batch that fits, or when that batch uses all but REFINE_WITHIN of the capacity."""
    for _ in range(REFINE_COMPILES):
        guess = _next_guess(known)
        if guess is None:
            break
        known.append(measure(guess))
    return _largest_fit(known)


def _largest_fit(known: list[StepReport]) -> StepReport | None:
    return max((r for r in known if r.fits), key=lambda r: r.batch_per_device, default=None)


def _next_guess(known: list[StepReport]) -> int | None:
    """`refine_largest`'s next batch to compile, or None when the search is done."""
    fit = _largest_fit(known)
    over = min((r.batch_per_device for r in known if not r.fits), default=None)
    lo = fit.batch_per_device if fit else 0
    if fit is not None and fit.total_bytes >= (1 - REFINE_WITHIN) * fit.capacity:
        return None
    guess = _secant_guess(known)
    if over is not None and (guess is None or not lo < guess < over):
        guess = (lo + over) // 2
    elif over is None and fit is not None and (guess is None or guess <= lo):
        guess = _scaled_to_capacity(fit)
    if guess is None or guess <= lo or (fit is not None and guess - lo <= REFINE_WITHIN * lo):
        return None
    return guess


def _scaled_to_capacity(fit: StepReport) -> int | None:
    """The batch at which `fit`'s temporaries, grown in proportion to the batch, fill the capacity: the next step
    up when the secant has none (XLA rematerialised more at a larger batch, and memory fell as the batch grew)."""
    if fit.temp_bytes <= 0:
        return None
    return int(fit.batch_per_device * (fit.capacity - (fit.total_bytes - fit.temp_bytes)) / fit.temp_bytes)


def _versions(target: targets.Target) -> dict[str, str]:
    return targets.check_compiler(target.platform)


def compile_check(config: TrainConfig, target_name: str, *, search: bool = True) -> dict[str, Any]:
    """train.py's steps for `config` compiled for `target_name`: the report as a JSON-ready dict, with `fits` and,
    when a step does not fit and `search`, `largest_batch` (per device) for the flag that sets its batch."""
    from mv2jax.accel.steps import build_steps, offline_config

    target = targets.parse_target(target_name)
    versions = _versions(target)
    targets.prepare_process()
    config, notes = offline_config(config)
    devices = target.devices()
    steps = build_steps(config, devices)
    reports = {p.name: compile_program(p, target, steps.devices) for p in (steps.train, steps.eval)}
    largest: dict[str, int | None] = {}
    for name, flag, dest in (
        ("train", "-b", "batch_size"),
        ("eval", "--validation-batch-size", "validation_batch_size"),
    ):
        if not search or reports[name].fits:
            continue

        def measure(batch: int, name=name, dest=dest) -> StepReport:
            rebuilt = build_steps(dataclasses.replace(config, **{dest: batch}), devices)
            return compile_program(getattr(rebuilt, name), target, rebuilt.devices)

        found = largest_fitting_batch(measure, reports[name])
        largest[flag] = found.batch_per_device if found else None
    chip = target.chip
    return {
        "target": target.name,
        "platform": target.platform,
        "chip": dataclasses.asdict(chip),
        "devices": steps.devices,
        "hosts": targets.hosts(devices),
        "memory_capacity_bytes": target.memory_capacity,
        "model": config.model,
        "image_size": list(steps.image_size),
        "num_classes": steps.num_classes,
        "amp": config.amp,
        "conv_impl": config.conv_impl,
        "versions": versions,
        "ignored": notes,
        "notes": [GPU_COST_NOTE] if target.platform == "cuda" else [],
        "steps": {name: r.to_dict(chip) for name, r in reports.items()},
        "fits": all(r.fits for r in reports.values()),
        "largest_batch": largest,
    }


def run_compile_only(config: TrainConfig) -> int:
    """train.py's `--compile-only`: print the report; 0 when both steps fit, EXIT_DOES_NOT_FIT otherwise."""
    from mv2jax.accel.report import format_report
    from mv2jax.accel.steps import offline_config

    for note in offline_config(config)[1]:  # before the compiles, which take minutes
        print(f"train.py: {note}", flush=True)
    report = compile_check(config, config.compile_only or "")
    print(format_report(report), flush=True)
    return 0 if report["fits"] else EXIT_DOES_NOT_FIT
