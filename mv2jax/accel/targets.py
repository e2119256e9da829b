"""The accelerators a compile-only build targets: each chip's published peak, bandwidth and memory, the target
names users pass (`v5e:2x2`, `v4:2x2x1`, `v5e:4x4`, `h100`, `8xh100`), and their compile-only devices.

TPU devices come from libtpu's topologies (`jax[tpu]`), GPU devices from jax's CUDA plugin (`jax[cuda12]`) with a
`GpuTargetConfigProto` text spec shipped in `specs/`. Neither needs the device; both need the package at the
version this jax was released with, so a missing or mismatched one is a one-line error with the pip command.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GIB = 1 << 30
SPECS = Path(__file__).resolve().parent / "specs"
# JAX's default share of a GPU's memory for its allocator (XLA_PYTHON_CLIENT_MEM_FRACTION); TPUs use all of it.
GPU_MEMORY_FRACTION_DEFAULT = 0.75
MAX_GPUS_PER_HOST = 8


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator chip: dense bf16 peak (FLOP/s), memory bandwidth (bytes/s) and memory (bytes), as its maker
    publishes them (`source`). `chip_config` is libtpu's ('megacore': one device per chip, its two TensorCores
    together); `spec` the GPU's target-config file in `specs/`."""

    name: str
    platform: str  # 'tpu' or 'cuda'
    description: str
    peak_bf16_flops: float
    memory_bandwidth: float
    memory_bytes: int
    source: str
    chip_config: str = "default"
    spec: str = ""


# Google Cloud TPU documentation, "System architecture" table of each generation's page.
TPU_CHIPS: dict[str, Chip] = {
    "v4": Chip(
        "v4", "tpu", "TPU v4", 275e12, 1200e9, 32 * GIB, "https://cloud.google.com/tpu/docs/v4", chip_config="megacore"
    ),
    "v5e": Chip("v5e", "tpu", "TPU v5e", 197e12, 819e9, 16 * GIB, "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip(
        "v5p",
        "tpu",
        "TPU v5p",
        459e12,
        2765e9,
        95 * GIB,
        "https://cloud.google.com/tpu/docs/v5p",
        chip_config="megacore",
    ),
    "v6e": Chip("v6e", "tpu", "TPU v6e", 918e12, 1638e9, 32 * GIB, "https://cloud.google.com/tpu/docs/v6e"),
}
# NVIDIA's datasheets (dense bf16 Tensor Core peak, i.e. without sparsity): H100 SXM5 80 GB; A100 SXM4 80 GB.
GPU_CHIPS: dict[str, Chip] = {
    "h100": Chip(
        "h100",
        "cuda",
        "NVIDIA H100 SXM 80GB",
        989e12,
        3.35e12,
        80 * GIB,
        "https://www.nvidia.com/en-us/data-center/h100/ (datasheet)",
        spec="h100_sxm.txtpb",
    ),
    "a100": Chip(
        "a100",
        "cuda",
        "NVIDIA A100 SXM4 80GB",
        312e12,
        2.039e12,
        80 * GIB,
        "https://www.nvidia.com/en-us/data-center/a100/ (datasheet)",
        spec="a100_sxm_80.txtpb",
    ),
}
# What --help and the unknown-target error show; any GENERATION:SHAPE libtpu accepts works.
EXAMPLE_TARGETS = ("v5e:2x2", "v4:2x2x1", "v5p:2x2x1", "v6e:2x2", "v5e:4x4", "h100", "a100", "8xh100")
_TPU_NAME = re.compile(r"^(?P<chip>[a-z0-9]+):(?P<shape>\d+(?:x\d+){1,2})$")
_GPU_NAME = re.compile(r"^(?:(?P<count>\d+)x)?(?P<chip>[a-z0-9]+)$")


class TargetError(ValueError):
    """A target name, or the package that compiles for it, is wrong (one line, exit code 2)."""


@dataclasses.dataclass(frozen=True)
class Target:
    """A parsed target: `name` as given, its `chip`, the slice `shape` (TPU) or GPU `count` on one host."""

    name: str
    chip: Chip
    shape: tuple[int, ...] = ()
    count: int = 1

    @property
    def platform(self) -> str:
        return self.chip.platform

    @property
    def memory_capacity(self) -> int:
        """Bytes one device's programs may use: a TPU's HBM; the share of a GPU's JAX takes by default."""
        if self.platform == "tpu":
            return self.chip.memory_bytes
        fraction = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", GPU_MEMORY_FRACTION_DEFAULT))
        return int(self.chip.memory_bytes * fraction)

    def devices(self) -> list[Any]:
        """The target's compile-only devices (every chip of every host of the slice)."""
        return tpu_devices(self) if self.platform == "tpu" else gpu_devices(self)


def valid_names() -> str:
    tpus = ", ".join(sorted(TPU_CHIPS))
    gpus = ", ".join(sorted(GPU_CHIPS))
    return (
        f"TPU slices GENERATION:SHAPE ({tpus}; e.g. {', '.join(EXAMPLE_TARGETS[:5])}), "
        f"GPUs {gpus} or NxGPU on one host (N <= {MAX_GPUS_PER_HOST}, e.g. 8xh100)"
    )


def parse_target(name: str) -> Target:
    """'v5e:2x2' / 'h100' / '8xh100' -> Target; TargetError listing the valid names otherwise."""
    text = name.strip().lower()
    tpu, gpu = _TPU_NAME.match(text), _GPU_NAME.match(text)
    if tpu and tpu["chip"] in TPU_CHIPS:
        return Target(text, TPU_CHIPS[tpu["chip"]], shape=tuple(int(d) for d in tpu["shape"].split("x")))
    if gpu and gpu["chip"] in GPU_CHIPS:
        count = int(gpu["count"] or 1)
        if 1 <= count <= MAX_GPUS_PER_HOST:
            return Target(text, GPU_CHIPS[gpu["chip"]], count=count)
    raise TargetError(f"--compile-only {name!r}: unknown target; valid: {valid_names()}")


# --- the packages that compile ------------------------------------------------------------------------------------


def _installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _jax_pin(dist: str, extra: str) -> Any:
    """jax's own requirement on `dist` for `extra` (e.g. libtpu==0.0.42.* for jax[tpu]), or None."""
    from packaging.requirements import Requirement

    for line in importlib.metadata.requires("jax") or []:
        req = Requirement(line)
        if req.name == dist and req.marker is not None and req.marker.evaluate({"extra": extra}):
            return req
    return None


def check_compiler(platform: str) -> dict[str, str]:
    """The versions that compile for `platform` ('tpu': libtpu, 'cuda': jax-cuda12-plugin), checked against the
    ones this jax asks for; TargetError with the pip command when one is missing or another version."""
    import jax
    import jaxlib

    dist, extra = ("libtpu", "tpu") if platform == "tpu" else ("jax-cuda12-plugin", "cuda12")
    fix = f'pip install "jax[{extra}]=={jax.__version__}"'
    what = "libtpu" if platform == "tpu" else "jax's CUDA 12 plugin"
    version = _installed(dist)
    if version is None:
        raise TargetError(f"compiling for {platform.upper()} needs {what}, which is not installed: {fix}")
    pin = _jax_pin(dist, extra)
    if pin is not None and not pin.specifier.contains(version, prereleases=True):
        raise TargetError(f"{dist} {version} is installed, jax {jax.__version__} needs {dist}{pin.specifier}: {fix}")
    if platform == "cuda" and not importlib.util.find_spec("jax_plugins.xla_cuda12"):
        raise TargetError(f"jax-cuda12-plugin {version} is installed but not importable: {fix}")
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, dist: version}


def prepare_process() -> None:
    """Set up this process for compile-only builds, before JAX starts a backend: only the CPU runs anything (the
    state's shapes), the CUDA plugin skips its checks against a driver (there may be none), and libtpu, on a
    machine without TPU chips, is told this host alone makes the slice (it otherwise looks for the slice's host
    names and accelerator type in the TPU VM's metadata and prints warnings when they are missing), and may load
    in several processes at once. Settings the environment already has are kept."""
    import jax
    from jax._src import hardware_utils, xla_bridge

    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    if hardware_utils.num_available_tpu_chips_and_device_id()[0] == 0:
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-1")
        os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # no chips to guard: compile-only runs side by side
    if not xla_bridge.backends_are_initialized():
        jax.config.update("jax_platforms", "cpu")


def tpu_devices(target: Target) -> list[Any]:
    """libtpu's compile-only devices for a slice: one per chip (megacore chips as one), four chips per host."""
    import jax
    from jax.experimental import topologies

    prepare_process()
    host_bounds = tuple(min(2, d) for d in target.shape[:2]) + (1,)
    try:
        topology = topologies.get_topology_desc(
            topology_name=target.name,
            platform="tpu",
            chip_config_name=target.chip.chip_config,
            chips_per_host_bounds=host_bounds,
            num_slices=1,
            wrap=(False,) * 3,
        )
    except jax.errors.JaxRuntimeError as e:
        refusal = _first_line(e)
        raise TargetError(
            f"--compile-only {target.name}: libtpu refuses it ({refusal}); valid: {valid_names()}"
        ) from None
    return list(topology.devices)


def gpu_spec(chip: Chip) -> str:
    """The chip's GpuTargetConfigProto text, with the cuDNN version set to the installed cuDNN wheel's (the one
    jax[cuda12] also installs on the GPU host), so XLA picks the cuDNN features that will be there."""
    text = (SPECS / chip.spec).read_text()
    cudnn = _installed("nvidia-cudnn-cu12")
    if cudnn:
        major, minor, patch = (cudnn.split(".") + ["0", "0"])[:3]
        block = f"dnn_version_info {{\n  major: {major}\n  minor: {minor}\n  patch: {patch}\n}}"
        text = re.sub(r"dnn_version_info \{[^}]*\}", block, text)
    return text


def gpu_devices(target: Target) -> list[Any]:
    """Compile-only CUDA devices of one host with `target.count` GPUs of the target's spec."""
    prepare_process()
    from jax.experimental import topologies

    topology = topologies.get_topology_desc(
        topology_name=target.chip.name,
        platform="cuda",
        target_config=gpu_spec(target.chip),
        topology=f"1x1x{target.count}",  # slices x hosts x GPUs per host
    )
    return list(topology.devices)


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def hosts(devices: Sequence[Any]) -> int:
    return len({d.process_index for d in devices})
