"""The backend seam: one registry of backend objects, each with the `Backend` protocol's signatures, held by the
layers; and nothing of the 'cpu' backend's machinery outside `backends/cpu.py`."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from flax import nnx

import mv2jax
from mv2jax.models.backends import BACKENDS, CONV_IMPLS, Backend, get_backend, resolve_conv_impl
from mv2jax.models.folded import ConvSpec, FusedBlock
from mv2jax.models.layers import BatchNormAct2d, Conv2d

PACKAGE = Path(mv2jax.__file__).resolve().parent
CPU_BACKEND = PACKAGE / "models" / "backends" / "cpu.py"

# The 'cpu' backend's machinery, by the names it goes by, and comparisons with the name 'cpu'.
CPU_ONLY = {
    "lax.cond": r"\blax\.cond\b",
    "custom_vjp": r"\bcustom_vjp\b",
    "optimization_barrier": r"\boptimization_barrier\b",
    "slope_one": r"\bslope_one\b",
    "batch chunking": r"\bchunked\b|batch_chunk|BATCH_CHUNK",
    "comparison with 'cpu'": r"""[=!]=\s*['"]cpu['"]|['"]cpu['"]\s*[=!]=|\bin\s*[(\[{]\s*['"]cpu['"]""",
}
# Matches that are about JAX's platform, not the backend, with the reason each is allowed.
ALLOWED = {
    ("models/backends/__init__.py", "comparison with 'cpu'"): "resolve_conv_impl's 'auto' rule reads JAX's platform",
    ("host_memory.py", "comparison with 'cpu'"): "the host allocator's 'auto' reads JAX_PLATFORMS' first platform",
    ("train/loop.py", "comparison with 'cpu'"): "the compile cache stays off across processes on JAX's CPU platform",
}
PROTOCOL_METHODS = sorted(
    name for name, member in vars(Backend).items() if inspect.isfunction(member) and not name.startswith("_")
)


def test_registry_names_are_the_conv_impls_and_auto_resolves_to_one():
    assert tuple(BACKENDS) == ("xla", "cpu") and CONV_IMPLS == ("auto", "xla", "cpu")
    for name, backend in BACKENDS.items():
        assert backend.name == name and get_backend(name) is backend and get_backend(backend) is backend
    assert get_backend("auto") is BACKENDS[resolve_conv_impl("auto")]
    with pytest.raises(ValueError, match="conv_impl"):
        get_backend("cudnn")


@pytest.mark.parametrize("name", list(BACKENDS))
@pytest.mark.parametrize("method", PROTOCOL_METHODS)
def test_each_backend_function_has_the_protocol_signature(name, method):
    expected = inspect.signature(getattr(Backend, method))
    expected = expected.replace(parameters=list(expected.parameters.values())[1:])  # without self
    assert inspect.signature(getattr(BACKENDS[name], method)) == expected


@pytest.mark.parametrize("name", list(BACKENDS))
def test_each_backend_has_the_protocol_properties(name):
    backend = BACKENDS[name]
    properties = [n for n, m in vars(Backend).items() if isinstance(m, property)]
    assert sorted(properties) == ["inference_compiler_options", "name"]
    assert backend.inference_compiler_options is None or dict(backend.inference_compiler_options)


@pytest.mark.parametrize("conv_impl", list(BACKENDS))
def test_layers_hold_the_resolved_backend_object(conv_impl):
    model = mv2jax.create_model("mobilenetv2_035", conv_impl=conv_impl)
    layers = [m for _, m in nnx.iter_modules(model) if isinstance(m, Conv2d | BatchNormAct2d)]
    assert len(layers) == 104 and all(layer.backend is BACKENDS[conv_impl] for layer in layers)
    assert model.conv_impl == conv_impl


def test_a_block_kind_must_match_its_convolutions():
    spec = ConvSpec(3, 1, 1, True, "relu6")
    assert FusedBlock("ds", (spec, spec), skip=True).kind == "ds"
    with pytest.raises(ValueError, match="'ir' block has 3"):
        FusedBlock("ir", (spec, spec), skip=False)
    with pytest.raises(ValueError, match="unknown block kind"):
        FusedBlock("se", (spec, spec), skip=False)


def _cpu_only_matches() -> dict[tuple[str, str], list[str]]:
    found: dict[tuple[str, str], list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == CPU_BACKEND:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for what, pattern in CPU_ONLY.items():
                if re.search(pattern, line):
                    key = (path.relative_to(PACKAGE).as_posix(), what)
                    found.setdefault(key, []).append(f"{number}: {line.strip()}")
    return found


def test_nothing_of_the_cpu_backend_outside_its_file():
    found = _cpu_only_matches()
    unexpected = {key: lines for key, lines in found.items() if key not in ALLOWED}
    assert not unexpected, f"CPU-backend code outside backends/cpu.py: {unexpected}"
    assert set(ALLOWED) <= set(found), f"stale allowances: {set(ALLOWED) - set(found)}"  # keep the list honest


def test_the_scan_finds_the_cpu_backend_in_its_own_file():
    text = CPU_BACKEND.read_text()
    for what in ("lax.cond", "custom_vjp", "batch chunking"):
        assert re.search(CPU_ONLY[what], text), what
