"""What an optimized HLO module (`compiled.as_text()`) says about a step: its kernels (fusions and custom calls in
the entry computation), its cuDNN calls, the convolutions left to XLA, and the bytes its kernels read and write.

XLA:GPU's compiled cost analysis is empty without a device, so on a GPU the HBM bytes are counted here: every
fusion and custom call of the entry computation reads its operands and writes its result once (a cuDNN call's
scratch workspace not counted). That is XLA's own `bytes accessed` rule, applied to the kernels after fusion.
The flops come from XLA's cost analysis of the lowered (not yet optimized) module, run on the CPU backend.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any

DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "f8e4m3fn": 1,
    "f8e5m2": 1,
    "bf16": 2,
    "f16": 2,
    "s16": 2,
    "u16": 2,
    "f32": 4,
    "s32": 4,
    "u32": 4,
    "f64": 8,
    "s64": 8,
    "u64": 8,
    "c64": 8,
    "c128": 16,
}
KERNELS = ("fusion", "custom-call")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
# `%name = TYPE opcode(operands), attributes`; TYPE is an array type or a tuple of them.
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(\(.*?\)|[a-z0-9]+\[[0-9,]*\](?:\{[^}]*\})?)\s+([\w\-]+)\((.*)$"
)
_TARGET = re.compile(r'custom_call_target="([^"]+)"')


def array_bytes(type_text: str, skip_u8: bool = False) -> int:
    """Bytes of every array in an HLO type (`f32[8,32]{1,0}` or a tuple of them)."""
    total = 0
    for dtype, dims in _ARRAY.findall(type_text):
        if dtype not in DTYPE_BYTES or (skip_u8 and dtype == "u8"):
            continue
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * DTYPE_BYTES[dtype]
    return total


def entry_computation(text: str) -> list[str]:
    """The lines of the module's ENTRY computation."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("ENTRY")), None)
    if start is None:
        return []
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("}")), len(lines))
    return lines[start + 1 : end]


def _operands(rest: str) -> list[str]:
    """Operand names of an instruction (the text after its opening parenthesis)."""
    depth, out = 1, []
    for i, ch in enumerate(rest):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            out = re.findall(r"%([\w.\-]+)", rest[:i])
            break
    return out


@dataclasses.dataclass(frozen=True)
class HloStats:
    """Counts over an optimized module: kernels of the entry computation, custom-call targets anywhere, XLA
    convolutions anywhere (a GPU module sends them all to cuDNN), and the kernels' operand + result bytes."""

    fusions: int
    custom_calls: dict[str, int]
    convolutions: int
    kernel_bytes: int

    @property
    def cudnn_convolutions(self) -> int:
        return sum(n for target, n in self.custom_calls.items() if target.startswith("__cudnn$conv"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "fusions": self.fusions,
            "custom_calls": dict(self.custom_calls),
            "cudnn_convolutions": self.cudnn_convolutions,
            "xla_convolutions": self.convolutions,
            "kernel_bytes": self.kernel_bytes,
        }


def hlo_stats(text: str) -> HloStats:
    sizes: dict[str, int] = {}
    fusions, kernel_bytes = 0, 0
    for line in entry_computation(text):
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, type_text, opcode, rest = m.groups()
        sizes[name] = array_bytes(type_text)
        if opcode not in KERNELS:
            continue
        fusions += opcode == "fusion"
        result = array_bytes(type_text, skip_u8=opcode == "custom-call")  # cuDNN's workspace is scratch
        kernel_bytes += result + sum(sizes.get(op, 0) for op in _operands(rest))
    return HloStats(
        fusions=fusions,
        custom_calls=dict(collections.Counter(_TARGET.findall(text))),
        convolutions=len(re.findall(r"\sconvolution\(", text)),
        kernel_bytes=kernel_bytes,
    )


def lowered_flops(lowered: Any) -> float | None:
    """XLA's flop count of a lowered (unoptimized, unpartitioned: the whole global batch) module, from the CPU
    backend's cost analysis; None if this jax cannot give it."""
    try:
        import jax
        from jax._src.lib import _jax

        module = lowered.compiler_ir("hlo").as_hlo_module()
        cost = _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)
    except (AttributeError, ImportError, RuntimeError, ValueError):
        return None
    return float(cost.get("flops", 0.0)) or None
