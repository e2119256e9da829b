"""The loader phase: timm's RA train transform on JPEGs, mv2jax's numpy + Pillow port vs timm's own, on the same
files and settings (`BenchConfig.augment`, output `cfg.img_size` px, float32 normalised, RandomErasing on).

Each side measures, in this one process, `transform` (read file + decode + transform, one image after another:
images/s of one worker) and then its batched loader with each of `cfg.loader.workers` worker processes
(`loader_j<N>`: mv2jax's grain loader, timm's `create_loader` torch DataLoader, batch `cfg.train_batch_size`,
shuffled; `-j 0` works in the main process). A timed run is `cfg.loader.images` images; the first run (worker
start-up, cold caches) is reported apart as `first_run_s`. torch runs with one intra-op thread, as in a
DataLoader worker. `peak_rss_mib` is the main process's only (workers are separate processes).
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from mv2jax.bench.common import BenchConfig, peak_rss_mib, time_calls


def _loader_timing_config(cfg: BenchConfig) -> BenchConfig:
    """One warm-up run, then `cfg.loader.repeats` timed runs of exactly one call each."""
    return dataclasses.replace(cfg, repeats=cfg.loader.repeats, warmup=1, min_iters=1, target_run_s=0.0)


def _measure(
    base: dict[str, Any], call: Callable[[], Any], images: int, workers: int, cfg: BenchConfig
) -> dict[str, Any]:
    """Time `call` (`images` images per call); a failure becomes a `failed` record instead of ending the phase."""
    first: list[float] = []

    def timed_call() -> None:
        t0 = time.perf_counter()
        call()
        if not first:
            first.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    try:
        timing = time_calls(timed_call, images, _loader_timing_config(cfg))
    except Exception as err:  # a worker crash or a missing file: report it, keep measuring the rest
        error = "".join(traceback.format_exception_only(type(err), err)).strip()[-2000:]
        return base | {
            "status": "failed",
            "error": error,
            "time_spent_s": time.perf_counter() - t0,
            "peak_rss_mib": peak_rss_mib(),
        }
    return base | {
        "status": "ok",
        "workers": workers,
        "images_per_s": timing,
        "images_per_s_per_worker": timing["median"] / max(workers, 1),
        "first_run_s": first[0],
        "images_per_run": images,
        "img_size": cfg.img_size,
        "peak_rss_mib": peak_rss_mib(),
    }


def _loop(dataset_len: int, images: int, get: Callable[[int], Any]) -> Callable[[], None]:
    """A call that fetches items `0 .. images-1` (modulo the dataset's length) one after another."""

    def call() -> None:
        for i in range(images):
            get(i % dataset_len)

    return call


def _take(batches: Iterator[Any], steps: int) -> Callable[[], None]:
    """A call that pulls the next `steps` batches from an endless iterator."""

    def call() -> None:
        for _ in range(steps):
            next(batches)

    return call


def _endless(loader: Any) -> Iterator[Any]:
    """A torch DataLoader's batches, epoch after epoch (persistent workers keep running between epochs)."""
    while True:
        yield from loader


def _steps(cfg: BenchConfig) -> tuple[int, int]:
    """(batch size, batches per timed run) for the loaders: about `cfg.loader.images` images per run."""
    batch = min(cfg.train_batch_size, cfg.loader.images)
    return batch, math.ceil(cfg.loader.images / batch)


def mv2jax_phase(cfg: BenchConfig, variant: str) -> list[dict[str, Any]]:
    """mv2jax: `mv2jax.data.create_transform(is_training=True, ...)` alone, then `create_loader` per worker count."""
    import numpy as np

    from mv2jax.data import create_dataset, create_loader, create_transform, decode_image

    a = cfg.augment
    source = create_dataset("", root=cfg.loader.data_dir, split="train")
    transform = create_transform(
        cfg.img_size,
        is_training=True,
        auto_augment=a.auto_augment,
        interpolation=a.interpolation,
        hflip=a.hflip,
        re_prob=a.re_prob,
        re_mode=a.re_mode,
        re_count=a.re_count,
    )
    rng = np.random.default_rng(0)
    base = {"side": "mv2jax", "mode": "loader", "dataset_len": len(source)}
    once = _loop(len(source), cfg.loader.images, lambda i: transform(decode_image(source[i][0]), rng))
    results = [_measure(base | {"variant": "transform", "batch_size": 1}, once, cfg.loader.images, 1, cfg)]
    batch, steps = _steps(cfg)
    for workers in cfg.loader.workers:
        loader = create_loader(
            source,
            transform,
            batch_size=batch,
            is_training=True,
            seed=0,
            num_workers=workers,
            shard_index=0,
            shard_count=1,
            num_epochs=None,
        )
        batches = iter(loader)
        rec = base | {"variant": f"loader_j{workers}", "batch_size": batch}
        results.append(_measure(rec, _take(batches, steps), batch * steps, workers, cfg))
        batches.close()
    return results


def timm_phase(cfg: BenchConfig, variant: str) -> list[dict[str, Any]]:
    """timm: `timm.data.create_transform(is_training=True, ...)` on its `ImageDataset`, then
    `timm.data.create_loader` (no prefetcher: normalising and erasing happen in the workers) per worker count."""
    import timm.data
    import torch

    torch.set_num_threads(1)
    a = cfg.augment
    dataset = timm.data.create_dataset("", root=cfg.loader.data_dir, split="train", is_training=True)
    args = dict(
        is_training=True,
        auto_augment=a.auto_augment,
        interpolation=a.interpolation,
        hflip=a.hflip,
        re_prob=a.re_prob,
        re_mode=a.re_mode,
        re_count=a.re_count,
    )
    dataset.transform = timm.data.create_transform(cfg.img_size, **args)
    base = {"side": "timm", "mode": "loader", "dataset_len": len(dataset)}
    once = _loop(len(dataset), cfg.loader.images, dataset.__getitem__)
    results = [_measure(base | {"variant": "transform", "batch_size": 1}, once, cfg.loader.images, 1, cfg)]
    batch, steps = _steps(cfg)
    for workers in cfg.loader.workers:
        loader = timm.data.create_loader(
            dataset,
            (3, cfg.img_size, cfg.img_size),
            batch,
            num_workers=workers,
            use_prefetcher=False,
            device=torch.device("cpu"),
            **args,
        )
        batches = _endless(loader)
        rec = base | {"variant": f"loader_j{workers}", "batch_size": batch}
        results.append(_measure(rec, _take(batches, steps), batch * steps, workers, cfg))
        batches.close()
        del batches, loader  # drops the persistent workers before the next loader starts its own
        gc.collect()
    return results
