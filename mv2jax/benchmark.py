"""python -m mv2jax.benchmark — mv2jax vs timm on this machine, in one run, on the same threads.

Measures inference images/s (per batch size, fp32, every mv2jax `conv_impl`, the BatchNorm-folded
`fuse_for_inference` network, and timm eager / channels_last / torch.compile), the RA-recipe train step images/s,
jit and torch.compile times, peak RSS and XLA's memory and cost analyses, and the data loader's images/s with the
RA train transform on ImageNet-sized JPEGs (mv2jax's transform and grain loader vs timm's transform and
DataLoader, next to the train step's images/s). It also measures this machine's peaks as XLA reaches them (fp32
matmul GFLOP/s, memory GB/s) and what each target throughput would need of them (`mv2jax.bench.roofline`).
The accelerator phases compile the RA train step for TPU slices and GPUs this machine does not have (libtpu's and
jax's CUDA plugin's compile-only devices; `mv2jax.bench.accel_side`): per chip, XLA's flops and bytes per image,
temporaries, fusions and a roofline img/s, beside a textbook Flax step compiled in the same process, and how many
loader workers would feed a chip at that rate.
Prints a table and writes JSON (`--output`, rewritten after each phase and marked partial until the last, so a
stopped run keeps what it measured). Each phase (side x mode x variant) runs in a fresh subprocess so its
RSS high-water mark and compile times are its own; phases run one after another. `--phases` picks some of them.
Both sides run with the same host allocator setting, named in the report: glibc's as the environment has it, or
(`--host-allocator train`) the tunables train.py runs with (`mv2jax.host_memory`), under which PyTorch's
inference, too, stops page-faulting on big buffers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import fnmatch
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mv2jax import host_memory
from mv2jax.bench.accel_side import PRECISIONS, phase_variant
from mv2jax.bench.common import (
    MODEL_MODES,
    AccelBench,
    BenchConfig,
    LoaderBench,
    RooflineBench,
    available_cores,
    machine_info,
)
from mv2jax.bench.export_side import VARIANTS as EXPORT_VARIANTS
from mv2jax.bench.markdown import append_section
from mv2jax.bench.report import format_report, summarize
from mv2jax.bench.sample_jpegs import describe_image_folder, write_sample_jpegs
from mv2jax.cli import CliParser, cli_main
from mv2jax.io import write_atomic

PROG = "mv2jax.benchmark"
FUSED_VARIANT = "fused"  # inference only: `fuse_for_inference` of the model (conv_impl 'auto')
QUICK = dict(
    model="mobilenetv2_035",
    img_size=64,
    repeats=2,
    warmup=1,
    min_iters=2,
    target_run_s=0.0,
    loader=LoaderBench(images=8, sides=(48, 96), repeats=2),
    roofline=RooflineBench(matmul_size=256, memory_mib=4),
    accel=AccelBench(targets=()),  # compiles take minutes: only the targets --accel-targets names
)
LOADER_VARIANT = "ra"  # the loader phases measure the RA recipe's train transform
ROOFLINE = ("mv2jax", "roofline", "xla")  # the machine's matmul and memory peaks, as XLA reaches them
LOWERING = ("mv2jax", "lowering", "xla")  # the train step lowered for TPU and CUDA: op histograms, nothing compiled
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Phase:
    side: str  # 'mv2jax' | 'timm'
    mode: str  # 'inference' | 'train' | 'loader' | 'roofline'
    variant: str  # a conv_impl for mv2jax, a timm_side variant for timm; LOADER_VARIANT for the loader

    @property
    def name(self) -> str:
        return f"{self.side}:{self.mode}:{self.variant}"

    @classmethod
    def parse(cls, name: str) -> Phase:
        return cls(*name.split(":", 2))  # an accel variant holds a ':' of its own ('v5e:2x2/bf16')


def plan(args: argparse.Namespace) -> list[Phase]:
    """Every phase this run measures: the machine's peaks, mv2jax, timm, then the loader phases; only those
    `--phases` selects."""
    from mv2jax.models.backends import BACKENDS  # imports JAX: only this driver plans, phases never do

    modes = ["inference"] + ([] if args.skip_train else ["train"])
    phases = [Phase(*ROOFLINE), Phase(*LOWERING)] + [Phase("mv2jax", m, impl) for m in modes for impl in BACKENDS]
    phases.insert(2 + len(BACKENDS), Phase("mv2jax", "inference", FUSED_VARIANT))
    if not args.skip_timm:
        variants = ["eager", "channels_last", "channels_last_1thread"] + ([] if args.no_torch_compile else ["compile"])
        phases += [Phase("timm", m, v) for m in modes for v in variants]
        if not args.quick:  # exported artifacts in ONNX Runtime / OpenVINO, timm's own ONNX export beside them
            phases += [Phase("export", "inference", v) for v in EXPORT_VARIANTS]
    if not args.skip_loader:
        phases += [Phase(side, "loader", LOADER_VARIANT) for side in ("mv2jax", "timm")[: 1 if args.skip_timm else 2]]
    if not args.skip_accel:  # last: each compiles for minutes
        accel = config_from_args(args).accel
        phases += [Phase("mv2jax", "accel", phase_variant(t, p)) for t in accel.targets for p in accel.precisions]
    return [p for p in phases if selected(p, args.phases)]


def selected(phase: Phase, patterns: list[str] | None) -> bool:
    """Whether `phase` matches one of `patterns`: a glob on its name ('timm:train:*') or one part of it ('loader',
    'timm'). No patterns select every phase."""
    if not patterns:
        return True
    parts = (phase.side, phase.mode, phase.variant)
    return any(fnmatch.fnmatchcase(phase.name, p) or p in parts for p in patterns)


def run_phase(phase: Phase, cfg: BenchConfig) -> list[dict[str, Any]]:
    """Run one phase in this process (imports only its own framework)."""
    if phase.mode == "roofline":
        from mv2jax.bench import roofline

        return roofline.roofline_phase(cfg)
    if phase.mode == "lowering":
        return lowering_phase(cfg)
    if phase.mode == "accel":
        from mv2jax.bench import accel_side

        return accel_side.accel_phase(cfg, phase.variant)
    if phase.mode == "loader":
        from mv2jax.bench import loader_side

        return (loader_side.mv2jax_phase if phase.side == "mv2jax" else loader_side.timm_phase)(cfg, phase.variant)
    if phase.side == "export":
        from mv2jax.bench import export_side

        return export_side.inference_phase(cfg, phase.variant)
    if phase.side == "mv2jax":
        from mv2jax.bench import jax_side

        fn = jax_side.inference_phase if phase.mode == "inference" else jax_side.train_phase
    else:
        from mv2jax.bench import timm_side

        fn = timm_side.inference_phase if phase.mode == "inference" else timm_side.train_phase
    return fn(cfg, phase.variant)


def lowering_phase(cfg: BenchConfig) -> list[dict[str, Any]]:
    """The RA train step at the benchmark's model, size and train batch, lowered for each accelerator platform
    with conv_impl 'xla' (`mv2jax.lowering`): one row per platform with its StableHLO op histogram."""
    import jax

    from mv2jax import lowering

    lowered = lowering.lower_ra_steps(
        model=cfg.model, devices=jax.devices()[:1], batch_size=cfg.train_batch_size, img_size=cfg.img_size
    )
    rows = []
    for facts in lowering.summarize([lw for lw in lowered if lw.name.startswith("train")]):
        del facts["convolutions"]  # one entry per convolution: the histogram counts them
        rows.append(dict(side="mv2jax", mode="lowering", variant="xla", batch_size=cfg.train_batch_size, status="ok"))
        rows[-1].update(facts)
    return rows


def _failed_phase(phase: Phase, cfg: BenchConfig, error: str) -> list[dict[str, Any]]:
    batches = {"inference": sorted(cfg.batch_sizes), "roofline": [0], "accel": [cfg.accel.batch_per_chip]}.get(
        phase.mode, [cfg.train_batch_size]
    )
    return [
        {
            "side": phase.side,
            "mode": phase.mode,
            "variant": phase.variant,
            "batch_size": b,
            "status": "failed",
            "error": error,
        }
        for b in batches
    ]


def run_isolated(phase: Phase, cfg: BenchConfig, timeout_s: float, python: str = "") -> list[dict[str, Any]]:
    """Run `phase` in a fresh `PYTHON -m mv2jax.benchmark --phase ...` subprocess (`python`, else this
    interpreter) and read its JSON back."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path, out_path = Path(tmp, "config.json"), Path(tmp, "out.json")
        cfg_path.write_text(json.dumps(cfg.to_json()))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
        cmd = [
            python or sys.executable,
            "-m",
            "mv2jax.benchmark",
            "--phase",
            phase.name,
            "--config-json",
            str(cfg_path),
            "--phase-output",
            str(out_path),
        ]
        try:
            proc = subprocess.run(cmd, env=env, timeout=timeout_s, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            return _failed_phase(phase, cfg, f"timed out after {timeout_s:.0f} s")
        if proc.returncode != 0 or not out_path.exists():
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            return _failed_phase(phase, cfg, f"exit code {proc.returncode}: {tail}")
        return json.loads(out_path.read_text())


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    fields: dict[str, Any] = dict(QUICK) if args.quick else {}
    for key in ("model", "img_size", "repeats", "warmup", "threads", "train_batch_size"):
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
    if args.batch_sizes is not None:
        fields["batch_sizes"] = tuple(args.batch_sizes)
    loader = {
        k: v
        for k, v in (
            ("images", args.loader_images),
            ("data_dir", args.loader_data_dir),
            ("workers", args.loader_workers and tuple(args.loader_workers)),
        )
        if v is not None
    }
    fields["loader"] = dataclasses.replace(fields.get("loader", LoaderBench()), **loader)
    accel = {
        k: v
        for k, v in (
            ("targets", args.accel_targets and tuple(args.accel_targets)),
            ("batch_per_chip", args.accel_batch),
            ("precisions", args.accel_precisions and tuple(args.accel_precisions)),
        )
        if v is not None
    }
    accel |= {"reference": not args.accel_no_reference, "largest_batch": args.accel_largest_batch}
    fields["accel"] = dataclasses.replace(fields.get("accel", AccelBench()), **accel)
    return BenchConfig(**fields)


def _threads_info(cfg: BenchConfig) -> dict[str, Any]:
    n = cfg.resolved_threads()
    return {
        "count": n,
        "description": (
            f"{n} (each phase pinned to {n} cores; torch.set_num_threads({n}) + set_num_interop_threads({n}); "
            f"XLA:CPU sizes its intra-op pool to the process's {n} cores)"
        ),
    }


def _pin_cores(threads: int) -> None:
    """Restrict this process (and so XLA's and torch's pools) to `threads` cores, before jax/torch start."""
    cores = sorted(os.sched_getaffinity(0))
    if threads and threads < len(cores):
        os.sched_setaffinity(0, cores[:threads])


def run_all(args: argparse.Namespace, cfg: BenchConfig, header: dict[str, Any]) -> dict[str, Any]:
    """Every planned phase, with sample JPEGs made for the loader phases unless `--loader-data-dir` names a
    folder: the report as written to JSON, starting with `header` (date, command)."""
    phases = plan(args)
    if not any(p.mode == "loader" for p in phases):
        return _run_phases(args, cfg, phases, None, header)
    if cfg.loader.data_dir:
        folder = describe_image_folder(cfg.loader.data_dir, limit=cfg.loader.images)
        return _run_phases(args, cfg, phases, folder, header)
    with tempfile.TemporaryDirectory(prefix="mv2jax_loader_bench_") as tmp:
        print(f"[benchmark] writing {cfg.loader.images} sample JPEGs to {tmp} ...", file=sys.stderr, flush=True)
        data = write_sample_jpegs(tmp, cfg.loader.images, cfg.loader.sides)
        loader_cfg = dataclasses.replace(cfg.loader, data_dir=tmp)
        return _run_phases(args, dataclasses.replace(cfg, loader=loader_cfg), phases, data, header)


def _run_phases(
    args: argparse.Namespace,
    cfg: BenchConfig,
    phases: list[Phase],
    loader_data: dict[str, Any] | None,
    header: dict[str, Any],
) -> dict[str, Any]:
    """Every phase in `phases` (isolated unless `--no-isolate`), then the summary. With `--output`, the report of the
    phases done so far is written after each one (`"partial": true` until the last), so a benchmark stopped after an
    hour of compiles keeps what it measured (`--from-json` renders it)."""
    t0, load_before = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    results: list[dict[str, Any]] = []
    for done, phase in enumerate(phases):
        print(f"[benchmark] {phase.name} ...", file=sys.stderr, flush=True)
        t_phase = time.perf_counter()
        python = args.accel_python if phase.mode == "accel" else ""
        phase_results = (
            run_phase(phase, cfg) if args.no_isolate else run_isolated(phase, cfg, args.phase_timeout, python)
        )
        for r in phase_results:  # the load average says how much other work shared the cores meanwhile
            r["phase_wall_s"], r["load_avg_1min_after"] = time.perf_counter() - t_phase, os.getloadavg()[0]
        results += phase_results
        if args.output and done + 1 < len(phases):
            partial = header | _report(args, cfg, results, loader_data, t0, load_before)
            partial |= {"partial": True, "phases_left": [p.name for p in phases[done + 1 :]]}
            write_atomic(Path(args.output), json.dumps(partial, indent=1).encode())
    return header | _report(args, cfg, results, loader_data, t0, load_before)


def _report(
    args: argparse.Namespace,
    cfg: BenchConfig,
    results: list[dict[str, Any]],
    loader_data: dict[str, Any] | None,
    t0: float,
    load_before: list[float],
) -> dict[str, Any]:
    mv2 = [r for r in results if r["side"] == "mv2jax" and r.get("status") == "ok" and r["mode"] in MODEL_MODES]
    return {
        "config": cfg.to_json(),
        "machine": machine_info(),
        "threads": _threads_info(cfg),
        "host_memory": host_memory.describe(),
        "isolated_phases": not args.no_isolate,
        "conv_impl_auto": next((r["conv_impl_auto"] for r in mv2), None),
        "conv_impls_run": sorted({r["conv_impl"] for r in mv2}),
        "step_impl": next((r["step_impl"] for r in mv2 if "step_impl" in r), None),
        "loader_data": loader_data,
        "results": results,
        "summary": summarize(results, cfg.batch_sizes, None if args.skip_train else cfg.train_batch_size),
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "total_wall_s": time.perf_counter() - t0,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = CliParser(PROG, description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="timm model name (default mobilenetv2_100)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="inference batch sizes (default 1 32)")
    p.add_argument("--train-batch-size", type=int, default=None, help="train step batch size (default 32)")
    p.add_argument("--img-size", type=int, default=None, help="square input size in pixels (default 224)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls after the first (compile) call")
    p.add_argument("--threads", type=int, default=None, help="cores for both sides (default: all available)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny run for tests: mobilenetv2_035 at 64 px, 2 short runs, no torch.compile",
    )
    p.add_argument("--skip-timm", action="store_true", help="measure mv2jax only")
    p.add_argument("--skip-train", action="store_true", help="inference only")
    p.add_argument("--skip-loader", action="store_true", help="no data loader phases")
    p.add_argument(
        "--phases",
        nargs="+",
        default=None,
        metavar="PATTERN",
        help="run only the phases matching a glob on side:mode:variant (e.g. 'timm:train:*') or equal "
        "to one part of it (e.g. 'loader', 'mv2jax'); the rest of the flags still apply",
    )
    p.add_argument(
        "--loader-images",
        type=int,
        default=None,
        help="images per timed loader run, and sample JPEGs written (default 256)",
    )
    p.add_argument(
        "--loader-workers",
        type=int,
        nargs="+",
        default=None,
        metavar="J",
        help="loader worker processes to measure, as -j (default 0 2)",
    )
    p.add_argument(
        "--loader-data-dir",
        default=None,
        help="ImageFolder (DIR[/train]/<class>/<image>) to load instead of sample JPEGs",
    )
    p.add_argument("--no-torch-compile", action="store_true", help="skip timm's torch.compile variants")
    _accel_args(p)
    p.add_argument(
        "--host-allocator",
        choices=("default", "train"),
        default="default",
        help="glibc malloc as the environment has it (default), or with the tunables train.py runs "
        "with (mv2jax.host_memory: no page faults on big per-step buffers); both sides alike",
    )
    p.add_argument("--no-isolate", action="store_true", help="run phases in this process (RSS then accumulates)")
    p.add_argument("--phase-timeout", type=float, default=3600.0, help="seconds before a phase is abandoned")
    p.add_argument("--output", default=None, help="write the JSON report here")
    p.add_argument(
        "--markdown",
        default=None,
        metavar="FILE",
        help="append the run as a section of FILE (e.g. BENCHMARKS.md): date, machine, versions, command, table",
    )
    p.add_argument("--title", default="Benchmark run", help="the --markdown section's heading (the date is added)")
    p.add_argument(
        "--from-json",
        default=None,
        metavar="REPORT",
        help="measure nothing: print (and with --markdown append) a report an earlier --output wrote",
    )
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--config-json", help=argparse.SUPPRESS)
    p.add_argument("--phase-output", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.no_torch_compile = args.no_torch_compile or args.quick
    return args


def _accel_args(p: argparse.ArgumentParser) -> None:
    """The accelerator phases' flags (`mv2jax.bench.accel_side`)."""
    p.add_argument("--skip-accel", action="store_true", help="no accelerator (compile-only TPU/GPU) phases")
    p.add_argument(
        "--accel-targets",
        nargs="+",
        default=None,
        metavar="TARGET",
        help="TPU slices and GPUs to compile the RA train step for, as train.py --compile-only names them "
        "(default v5e:2x2 v4:2x2x1 h100; none with --quick unless given)",
    )
    p.add_argument("--accel-batch", type=int, default=None, help="images per chip in the accelerator phases (128)")
    p.add_argument(
        "--accel-precisions",
        nargs="+",
        choices=PRECISIONS,
        default=None,
        help="bf16 (train.py --amp; the default) and/or fp32",
    )
    p.add_argument(
        "--accel-largest-batch",
        action="store_true",
        help="also find the largest per-chip batch that fits each target (two or three more compiles)",
    )
    p.add_argument(
        "--accel-no-reference",
        action="store_true",
        help="skip the textbook Flax reference step (half the compiles; no mv2jax/reference ratios)",
    )
    p.add_argument(
        "--accel-python",
        default="",
        metavar="PYTHON",
        help="interpreter for the accelerator phases: one with libtpu and jax's CUDA plugin (pip install "
        "'jax[tpu]==JAX_VERSION' 'jax[cuda12]==JAX_VERSION'); default this one (phases without them are skipped)",
    )


def _check_accel(cfg: BenchConfig) -> None:
    """--accel-targets names train.py --compile-only accepts; --accel-batch at least 1 (one line otherwise)."""
    from mv2jax.accel.targets import parse_target

    for name in cfg.accel.targets:
        try:
            parse_target(name)
        except ValueError as e:
            raise ValueError(str(e).replace("--compile-only", "--accel-targets")) from None
    if cfg.accel.batch_per_chip < 1:
        raise ValueError(f"--accel-batch must be >= 1, got {cfg.accel.batch_per_chip}")


@cli_main(PROG)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.phase:  # internal: one isolated phase, results to --phase-output
        cfg = BenchConfig.from_json(json.loads(Path(args.config_json).read_text()))
        _pin_cores(cfg.threads)
        Path(args.phase_output).write_text(json.dumps(run_phase(Phase.parse(args.phase), cfg)))
        return 0
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
    else:
        cfg = config_from_args(args)
        if cfg.threads and cfg.threads > available_cores():
            raise ValueError(f"--threads {cfg.threads} exceeds the {available_cores()} cores available")
        _check_accel(cfg)
        if args.accel_python and not os.access(args.accel_python, os.X_OK):
            raise ValueError(f"--accel-python {args.accel_python}: not an executable interpreter")
        started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        header = {
            "date": started,
            "command": shlex.join(["python", "-m", "mv2jax.benchmark", *(sys.argv[1:] if argv is None else argv)]),
        }
        report = run_all(args, cfg, header)
    print(format_report(report))
    if args.output and not args.from_json:
        write_atomic(Path(args.output), json.dumps(report, indent=1).encode())
        print(f"\nwrote {args.output}")
    if args.markdown:
        append_section(args.markdown, report, args.title)
        print(f"appended a section to {args.markdown}")
    return 0


if __name__ == "__main__":
    if parse_args().host_allocator == "train":
        host_memory.reexec_with_host_allocator("on")  # every phase, timm's and mv2jax's, inherits the same setting
    sys.exit(main())
