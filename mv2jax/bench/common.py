"""What every benchmark phase shares: the run configuration, the timing loop, memory and machine facts.

Units: throughput in images/s, times in seconds, memory in MiB (2**20 bytes).
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

MIB = 2**20
MODEL_MODES = ("inference", "train")  # the phases that run a network (the others: 'loader', 'roofline', 'accel')


@dataclasses.dataclass(frozen=True)
class TrainRecipe:
    """timm's RA recipe for MobileNetV2 as the train step sees it (timm flag in brackets)."""

    lr: float = 0.048  # [--lr]
    weight_decay: float = 1e-5  # [--weight-decay]
    momentum: float = 0.9  # [--momentum]
    opt_eps: float = 1e-3  # [--opt-eps]
    alpha: float = 0.9  # RMSpropTF decay
    ema_decay: float = 0.9999  # [--model-ema-decay]
    smoothing: float = 0.1  # [--smoothing]
    drop_rate: float = 0.2  # [--drop]
    drop_path_rate: float = 0.0  # [--drop-path]


@dataclasses.dataclass(frozen=True)
class AugmentRecipe:
    """timm's RA recipe's train transform (timm flag in brackets): RandomResizedCrop with a random
    bilinear/bicubic interpolation, hflip, RandAugment, normalise, RandomErasing."""

    auto_augment: str = "rand-m9-mstd0.5"  # [--aa]
    re_prob: float = 0.2  # [--reprob]
    re_mode: str = "pixel"  # [--remode]
    re_count: int = 1  # [--recount]
    interpolation: str = "random"  # [--train-interpolation]
    hflip: float = 0.5  # [--hflip]


@dataclasses.dataclass(frozen=True)
class LoaderBench:
    """What the loader phase measures: `images` JPEGs whose sides (pixels) are drawn from `sides` (made from
    scikit-learn's sample photographs unless `data_dir` names an ImageFolder to read instead), loaders with each
    of `workers` processes, `repeats` timed epochs each (median reported)."""

    images: int = 256
    sides: tuple[int, int] = (350, 500)
    workers: tuple[int, ...] = (0, 2)
    repeats: int = 3
    data_dir: str = ""


@dataclasses.dataclass(frozen=True)
class RooflineBench:
    """The machine's peaks (`mv2jax.bench.roofline`): a square fp32 matmul of `matmul_size` (XLA's CPU backend
    runs 2048 at its best GEMM rate) and memory passes over float32 arrays of `memory_mib` each (far beyond
    any cache)."""

    matmul_size: int = 2048
    memory_mib: int = 256


@dataclasses.dataclass(frozen=True)
class AccelBench:
    """The accelerator phases (`mv2jax.bench.accel_side`): train.py's RA train step for the run's model and image
    size, compiled for each of `targets` (TPU slices, GPUs) at `batch_per_chip` images per chip in each of
    `precisions` ('bf16' is --amp; 'fp32'), beside the textbook Flax reference (`reference`) and, with
    `largest_batch`, the largest per-chip batch that fits."""

    targets: tuple[str, ...] = ("v5e:2x2", "v4:2x2x1", "h100")
    batch_per_chip: int = 128
    precisions: tuple[str, ...] = ("bf16",)
    reference: bool = True
    largest_batch: bool = False


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """One benchmark run. `target_run_s`: each timed run repeats the call until it lasts about this long;
    `min_iters`/`repeats`/`warmup`: lower bound on calls per run, number of timed runs, untimed warm-up calls."""

    model: str = "mobilenetv2_100"
    img_size: int = 224
    batch_sizes: tuple[int, ...] = (1, 32)
    train_batch_size: int = 32
    repeats: int = 5
    warmup: int = 1
    min_iters: int = 1
    target_run_s: float = 2.0
    threads: int = 0  # 0: every core this process may run on
    num_classes: int = 1000
    recipe: TrainRecipe = TrainRecipe()
    augment: AugmentRecipe = AugmentRecipe()
    loader: LoaderBench = LoaderBench()
    roofline: RooflineBench = RooflineBench()
    accel: AccelBench = AccelBench()

    def resolved_threads(self) -> int:
        return self.threads or available_cores()

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchConfig:
        data = dict(data)
        data["batch_sizes"] = tuple(data["batch_sizes"])
        data["recipe"] = TrainRecipe(**data["recipe"])
        data["augment"] = AugmentRecipe(**data["augment"])
        loader = dict(data["loader"])
        loader["sides"], loader["workers"] = tuple(loader["sides"]), tuple(loader["workers"])
        data["loader"] = LoaderBench(**loader)
        data["roofline"] = RooflineBench(**data.get("roofline", {}))
        accel = dict(data.get("accel", {}))
        for key in ("targets", "precisions"):
            if key in accel:
                accel[key] = tuple(accel[key])
        data["accel"] = AccelBench(**accel)
        return cls(**data)


def available_cores() -> int:
    return len(os.sched_getaffinity(0))


def _warm(call: Callable[[], Any], cfg: BenchConfig) -> int:
    """Warm `call` up; the calls per timed run that make it last about `cfg.target_run_s`."""
    t0 = time.perf_counter()
    for _ in range(max(cfg.warmup, 1)):
        call()
    per_call = (time.perf_counter() - t0) / max(cfg.warmup, 1)
    return max(cfg.min_iters, math.ceil(cfg.target_run_s / max(per_call, 1e-6)))


def _timed_run(call: Callable[[], Any], iters: int, images_per_call: int) -> float:
    t0 = time.perf_counter()
    for _ in range(iters):
        call()
    return images_per_call * iters / (time.perf_counter() - t0)


def _stats(rates: list[float], iters: int, images_per_call: int) -> dict[str, Any]:
    median = statistics.median(rates)
    return {
        "median": median,
        "min": min(rates),
        "max": max(rates),
        "spread_pct": 100.0 * (max(rates) - min(rates)) / median,
        "runs": rates,
        "iters_per_run": iters,
        "step_s": images_per_call / median,
    }


def time_calls(call: Callable[[], Any], images_per_call: int, cfg: BenchConfig) -> dict[str, Any]:
    """Warm up, then `cfg.repeats` timed runs of back-to-back synchronous calls (`call` must block until its
    result is ready). Returns images/s per run and their median, min, max and spread (max-min over median, %)."""
    iters = _warm(call, cfg)
    return _stats([_timed_run(call, iters, images_per_call) for _ in range(cfg.repeats)], iters, images_per_call)


def time_interleaved(calls: dict[str, Callable[[], Any]], images_per_call: int, cfg: BenchConfig) -> dict[str, Any]:
    """`time_calls` for several calls in one process, their timed runs interleaved round by round (the order
    reversed every other round): a slow spell of a shared machine then falls on all of them alike, so their ratio
    holds where separate phases minutes apart can differ by a third."""
    iters = {name: _warm(call, cfg) for name, call in calls.items()}
    rates: dict[str, list[float]] = {name: [] for name in calls}
    for k in range(cfg.repeats):
        for name in list(calls)[:: 1 if k % 2 == 0 else -1]:
            rates[name].append(_timed_run(calls[name], iters[name], images_per_call))
    return {name: _stats(rates[name], iters[name], images_per_call) for name in calls}


def peak_rss_mib() -> float:
    """This process's resident-set high-water mark so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


CORE_PACKAGES = ("jax", "jaxlib", "flax", "optax", "torch", "timm")
OPTIONAL_PACKAGES = ("onnxruntime", "openvino", "ai-edge-litert", "litert-converter", "litert-torch")  # export phases


def machine_info() -> dict[str, Any]:
    """The machine and the installed versions (read from package metadata: nothing is imported)."""
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cores_available": available_cores(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_1_5_15": list(os.getloadavg()),
    }
    for name in CORE_PACKAGES + OPTIONAL_PACKAGES:
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = None
    return info
