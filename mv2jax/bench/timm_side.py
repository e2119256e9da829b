"""The timm side: the same model in PyTorch, at its best on this CPU, same threads as JAX.

Inference variants (all fp32 under `torch.inference_mode`): `eager` (NCHW), `channels_last`, and `compile`
(`torch.compile(dynamic=False)` of the channels_last model, with Inductor's `freezing` so conv weights are
prepacked as for deployment). Train variants: `eager`, `channels_last`, `compile` (the model compiled; the
optimizer step and EMA update stay eager as in timm's train.py). `channels_last_1thread` (both modes) runs with one
intra-op thread: on a machine shared with other work, OpenMP's barriers can make torch far slower with all cores
than with one, and "timm at its best here" must include that. The train step is timm's own pieces:
`create_optimizer_v2('rmsproptf', ...)`, `ModelEmaV3`, `LabelSmoothingCrossEntropy`, train-mode BatchNorm.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mv2jax.bench.common import BenchConfig, peak_rss_mib, time_calls

if TYPE_CHECKING:
    import torch

SINGLE_THREAD_SUFFIX = "_1thread"


def _setup(cfg: BenchConfig, variant: str) -> str:
    """Set torch's threads for `variant`; return the variant's layout/compile part (suffix removed)."""
    single = variant.endswith(SINGLE_THREAD_SUFFIX)
    set_threads(1 if single else cfg.resolved_threads())
    return variant.removesuffix(SINGLE_THREAD_SUFFIX)


def set_threads(threads: int) -> None:
    """Intra-op threads = the cores JAX uses; inter-op pool too (set once, before any parallel work)."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already started: keep it
        pass


def _create(cfg: BenchConfig, variant: str, **kwargs: Any) -> torch.nn.Module:
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model(cfg.model, num_classes=cfg.num_classes, **kwargs)
    if variant in ("channels_last", "compile"):
        model = model.to(memory_format=torch.channels_last)
    return model


def _input(cfg: BenchConfig, batch: int, variant: str) -> torch.Tensor:
    import torch

    x = torch.randn(batch, 3, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(0))
    return x.contiguous(memory_format=torch.channels_last) if variant != "eager" else x


def _compile(model: torch.nn.Module, *, freeze: bool) -> torch.nn.Module:
    import torch
    import torch._inductor.config as inductor_config

    inductor_config.freezing = freeze
    return torch.compile(model, dynamic=False)


def _failed(base: dict[str, Any], err: BaseException, spent_s: float) -> dict[str, Any]:
    lines = traceback.format_exception_only(type(err), err)
    return base | {
        "status": "failed",
        "error": "".join(lines).strip()[-2000:],
        "time_spent_s": spent_s,
        "peak_rss_mib": peak_rss_mib(),
    }


def _measure(base: dict[str, Any], call: Callable[[], Any], batch: int, cfg: BenchConfig) -> dict[str, Any]:
    """First call (compile, for `compile`) then steady timing; a failure becomes a `failed` record."""
    t0 = time.perf_counter()
    try:
        call()
        first = time.perf_counter() - t0
        timing = time_calls(call, batch, cfg)
    except Exception as err:  # torch.compile can fail in many ways; report it instead of crashing the run
        return _failed(base, err, time.perf_counter() - t0)
    compile_info = {"first_call_s": first, "first_call_minus_steady_s": max(first - timing["step_s"], 0.0)}
    return base | {"status": "ok", "images_per_s": timing, "compile": compile_info, "peak_rss_mib": peak_rss_mib()}


def inference_phase(cfg: BenchConfig, variant: str) -> list[dict[str, Any]]:
    import torch

    base_variant = _setup(cfg, variant)
    model = _create(cfg, base_variant).eval()
    if base_variant == "compile":
        model = _compile(model, freeze=True)
    results = []
    for batch in sorted(cfg.batch_sizes):
        x = _input(cfg, batch, base_variant)

        def call(x=x) -> torch.Tensor:
            with torch.inference_mode():
                return model(x)

        base = {
            "side": "timm",
            "mode": "inference",
            "variant": variant,
            "batch_size": batch,
            "threads": torch.get_num_threads(),
        }
        results.append(_measure(base, call, batch, cfg))
    return results


def _train_call(
    model: torch.nn.Module, train_model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: BenchConfig
) -> Callable[[], None]:
    """timm train.py's iteration: forward, loss, zero_grad, backward, optimizer step, EMA update."""
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.utils import ModelEmaV3

    r = cfg.recipe
    optimizer = create_optimizer_v2(
        model, "rmsproptf", lr=r.lr, weight_decay=r.weight_decay, momentum=r.momentum, eps=r.opt_eps, alpha=r.alpha
    )
    ema = ModelEmaV3(model, decay=r.ema_decay)
    loss_fn = LabelSmoothingCrossEntropy(smoothing=r.smoothing)
    updates = [0]

    def call() -> None:
        loss = loss_fn(train_model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        updates[0] += 1
        ema.update(model, step=updates[0])

    return call


def train_phase(cfg: BenchConfig, variant: str) -> list[dict[str, Any]]:
    import torch

    base_variant = _setup(cfg, variant)
    r = cfg.recipe
    model = _create(cfg, base_variant, drop_rate=r.drop_rate, drop_path_rate=r.drop_path_rate).train()
    train_model = _compile(model, freeze=False) if base_variant == "compile" else model
    batch = cfg.train_batch_size
    x = _input(cfg, batch, base_variant)
    y = torch.randint(0, cfg.num_classes, (batch,), generator=torch.Generator().manual_seed(1))
    call = _train_call(model, train_model, x, y, cfg)
    base = {
        "side": "timm",
        "mode": "train",
        "variant": variant,
        "batch_size": batch,
        "threads": torch.get_num_threads(),
    }
    return [_measure(base, call, batch, cfg)]
