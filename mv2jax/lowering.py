"""What a GPU or TPU would run, seen from a machine without one.

JAX lowers a jitted function for any platform without its device (`.trace(...).lower(lowering_platforms=...)`).
This module lowers the RA-recipe train step (timm's `mobilenetv2_100.ra_in1k` command line: RMSpropTF, EMA,
label smoothing, step LR with warmup, drop path, dropout; `--amp` for bf16) and the eval step as train.py builds
them, optionally data-parallel over a mesh of devices, and reads the StableHLO text: an op histogram, the custom
calls, the control flow, the convolutions. The tests assert on it and the benchmark reports it.

Only the lowered module is looked at. Compiling a module lowered for TPU on a CPU-only machine silently compiles
it for the CPU, so nothing here compiles.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mv2jax.cli import CliParser, add_conv_impl_arg, cli_main

PLATFORMS = ("tpu", "cuda")
# timm's RA template for this family (global batch 2 x 384), at a size that traces quickly; --amp is added for bf16
RA_FLAGS = (
    "--sched step --epochs 450 --decay-epochs 2.4 --decay-rate .97 --opt rmsproptf --opt-eps .001 "
    "--warmup-lr 1e-6 --weight-decay 1e-5 --drop 0.2 --drop-path 0.2 --model-ema --model-ema-decay 0.9999 "
    "--aa rand-m9-mstd0.5 --remode pixel --reprob 0.2 --lr .048"
).split()
# Control flow that would serialise or branch an accelerator's program.
CONTROL_FLOW_OPS = ("stablehlo.case", "stablehlo.if", "stablehlo.while")

_OP = re.compile(r"\b((?:stablehlo|chlo|mhlo|sdy|func|shardy)\.[a-z_0-9.]+)")
_CUSTOM_CALL = re.compile(r"stablehlo\.custom_call\s+@([\w.$-]+)")


@dataclasses.dataclass(frozen=True)
class Lowered:
    """One lowered program: its platform, what it is, and its StableHLO text."""

    platform: str
    name: str
    text: str

    def op_histogram(self) -> dict[str, int]:
        return dict(collections.Counter(_OP.findall(self.text)).most_common())

    def custom_calls(self) -> dict[str, int]:
        return dict(collections.Counter(_CUSTOM_CALL.findall(self.text)))

    def bn_stat_dtypes(self) -> set[str]:
        """Element types of the BatchNorm statistics: the sums over axes (1, 2, 3) of a `[G, n, H, W, C]` tensor
        (the layers' stat-group layout; nothing else in the network reduces a 5-D tensor that way)."""
        found = set()
        for line in self.text.splitlines():
            if "stablehlo.reduce" in line and "dimensions = [1, 2, 3] :" in line:
                operand = re.search(r":\s*\(tensor<((?:\d+x){5})(\w+)>", line)
                if operand:
                    found.add(operand.group(2))
        return found

    def control_flow(self) -> dict[str, int]:
        hist = self.op_histogram()
        return {op: hist[op] for op in CONTROL_FLOW_OPS if op in hist}

    def convolutions(self) -> list[dict[str, int | str]]:
        """Every convolution's feature/batch group counts and operand types."""
        convs = []
        for line in self.text.splitlines():
            if "stablehlo.convolution" not in line:
                continue
            groups = re.search(r"feature_group_count = (\d+)", line)
            batch = re.search(r"batch_group_count = (\d+)", line)
            types = re.findall(r"tensor<([^>]*)>", line)
            convs.append(
                {
                    "feature_group_count": int(groups.group(1)) if groups else 1,
                    "batch_group_count": int(batch.group(1)) if batch else 1,
                    "lhs": types[0] if types else "",
                    "rhs": types[1] if len(types) > 1 else "",
                    "out": types[-1] if types else "",
                }
            )
        return convs


def ra_config(
    model: str = "mobilenetv2_035",
    *,
    amp: bool = False,
    batch_size: int = 2,
    img_size: int = 32,
    conv_impl: str = "xla",
):
    """train.py's configuration for the RA recipe (per-device batch `batch_size`) on backend `conv_impl`."""
    from mv2jax.train.config import parse_config

    argv = ["--model", model, "-b", str(batch_size), "--img-size", str(img_size), "--conv-impl", conv_impl]
    argv += RA_FLAGS
    return parse_config([*argv, "--amp"] if amp else argv)


def build_steps(
    config, num_classes: int = 10, devices: Sequence[jax.Device] | None = None, platform: str | None = None
):
    """(train step, eval step, state, train batch, eval batch) as train.py builds them for `config` on `platform`
    (default: the devices'), on a mesh over `devices` (default: all), with zero-filled batches of the global
    size."""
    from mv2jax.train import run as train_run
    from mv2jax.train.mesh import create_mesh, num_data_devices, shard_batch, shard_train_state
    from mv2jax.train.state import create_train_state
    from mv2jax.train.step import make_eval_step, make_train_step

    mesh = create_mesh(devices)
    global_batch = config.batch_size * num_data_devices(mesh)
    model = train_run._create_model(config, num_classes).model
    platform = platform or mesh.devices.flat[0].platform
    tx, schedule, _ = train_run._optimizer(config, 1000, global_batch, lambda *_: None, platform)
    graphdef, state = create_train_state(model, tx, use_ema=config.model_ema)
    step_config = train_run._step_config(config, mesh, lambda *_: None, platform)
    size = config.img_size
    images = np.zeros((global_batch, size, size, 3), np.float32)
    labels = np.zeros((global_batch,), np.int32)
    train_batch = shard_batch({"image": images, "label": labels}, mesh)
    eval_batch = shard_batch({"image": images, "label": labels, "mask": np.ones(global_batch, bool)}, mesh)
    train_step = make_train_step(graphdef, tx, schedule, step_config, mesh)
    eval_step = make_eval_step(graphdef, state.rng_state, mesh)
    return train_step, eval_step, shard_train_state(state, mesh), train_batch, eval_batch


def lower_ra_steps(
    platforms: Sequence[str] = PLATFORMS,
    *,
    model: str = "mobilenetv2_035",
    amp: bool = False,
    devices: Sequence[jax.Device] | None = None,
    batch_size: int = 2,
    img_size: int = 32,
    conv_impl: str = "xla",
) -> list[Lowered]:
    """The RA-recipe train step and the eval step, lowered for each platform, built as train.py builds them there
    (`build_steps` with that platform: its optimizer-state layout, BatchNorm statistics buffer)."""
    config = ra_config(model, amp=amp, batch_size=batch_size, img_size=img_size, conv_impl=conv_impl)
    n = len(devices) if devices is not None else jax.device_count()
    tag = f"{'bf16' if amp else 'fp32'} x{n}"
    traced: dict[tuple[str, str], Any] = {}
    for platform in platforms:
        train_step, eval_step, state, train_batch, eval_batch = build_steps(config, devices=devices, platform=platform)
        traced["train", platform] = train_step.trace(state, train_batch)
        # the eval step is a closure over its jitted function: jit the closure to trace it
        traced["eval", platform] = jax.jit(eval_step).trace(state.params, state.batch_stats, eval_batch)
    return [
        Lowered(platform, f"{what} {tag}", traced[what, platform].lower(lowering_platforms=(platform,)).as_text())
        for what in ("train", "eval")
        for platform in platforms
    ]


def summarize(lowered: Sequence[Lowered]) -> list[dict]:
    """JSON-ready facts of each lowered program (what the tests assert and the benchmark reports)."""
    return [
        {
            "platform": lw.platform,
            "name": lw.name,
            "ops": lw.op_histogram(),
            "custom_calls": lw.custom_calls(),
            "control_flow": lw.control_flow(),
            "convolutions": lw.convolutions(),
            "bn_stat_dtypes": sorted(lw.bn_stat_dtypes()),
        }
        for lw in lowered
    ]


@cli_main("mv2jax.lowering")
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m mv2jax.lowering --out FILE`: lower the RA train step (fp32 and bf16, on one device and on all)
    and the eval step for TPU and CUDA, and write `summarize`'s facts as JSON. Run it with
    `XLA_FLAGS=--xla_force_host_platform_device_count=8` for an 8-device mesh on a CPU-only machine."""
    import json

    parser = CliParser("mv2jax.lowering", description=main.__doc__)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--model", default="mobilenetv2_035")
    add_conv_impl_arg(parser, default="xla", auto=False, help="the backend whose train step is lowered")
    parser.add_argument("--platforms", nargs="+", default=list(PLATFORMS))
    parser.add_argument("--quick", action="store_true", help="fp32 on one device only")
    args = parser.parse_args(argv)
    meshes = [jax.devices()[:1]] if args.quick else [jax.devices()[:1], jax.devices()]
    lowered = [
        lw
        for amp in ((False,) if args.quick else (False, True))
        for devices in meshes
        for lw in lower_ra_steps(args.platforms, model=args.model, amp=amp, devices=devices, conv_impl=args.conv_impl)
    ]
    from mv2jax.convert.files import write_atomic

    write_atomic(Path(args.out), json.dumps(summarize(lowered), indent=1).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
