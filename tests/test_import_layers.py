"""The package's layers read upward only: every `mv2jax` module belongs to one layer below, and no import (at module
level, inside a function, or an `importlib.import_module` of a literal name) reaches a higher layer. Modules of
one layer may import each other. The root package `mv2jax` is a lazy facade (its names load on first use), so
importing it (for `__version__`) is allowed anywhere."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mv2jax"
ROOT = "mv2jax"

# Lowest first. An entry names a module or a package (and everything under it); the longest entry that fits a
# module decides its layer, so a command line inside a package (`mv2jax.convert.cli`) sits with the commands.
LAYERS: tuple[tuple[str, ...], ...] = (
    # leaves: constants, files, signals, caches and the device mesh (jax only)
    ("mv2jax.constants", "mv2jax.io", "mv2jax.signals", "mv2jax.compile_cache", "mv2jax.host_memory", "mv2jax.mesh"),
    # below the models: weights readers and the state-dict mapping; data pipelines
    ("mv2jax.weights", "mv2jax.data"),
    ("mv2jax.models",),
    # over the models: metrics, training, converters, export; the shared CLI parts (train.py's parser uses them)
    ("mv2jax.metrics", "mv2jax.train", "mv2jax.convert", "mv2jax.export", "mv2jax.cli"),
    # the commands
    (
        "mv2jax.validate",
        "mv2jax.predict",
        "mv2jax.lowering",
        "mv2jax.benchmark",
        "mv2jax.bench",
        "mv2jax.accel",
        "mv2jax.convert.cli",
        "mv2jax.export.__main__",
    ),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the longest entry that is `module` or a package above it."""
    best = None
    for index, entries in enumerate(LAYERS):
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and (best is None or len(entry) > best[1]):
                best = (index, len(entry))
    return None if best is None else best[0]


def _is_package(module: str) -> bool:
    return (REPO / Path(*module.split(".")) / "__init__.py").is_file()


def _is_module(module: str) -> bool:
    path = REPO / Path(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(source: str, module: str) -> Iterator[tuple[int, str]]:
    """(line, imported mv2jax module) for every import in `source`, the text of `module`: `import a.b`,
    `from a import b` (a.b where that is a module, else a), relative imports, and `importlib.import_module` of a
    string literal; at any depth (function-local imports included)."""
    package = module if _is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield node.lineno, full if _is_module(full) else base
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def upward_imports(source: str, module: str) -> list[str]:
    """Every import in `source` (the text of `module`) of an mv2jax module in a higher layer, as 'where -> what'."""
    own = layer_of(module)
    found = []
    for line, target in sorted(set(imports_of(source, module))):
        if target == ROOT or not target.startswith(ROOT + "."):
            continue
        theirs = layer_of(target)
        if own is not None and theirs is not None and theirs > own:
            found.append(f"{module}:{line} -> {target} (layer {own} imports layer {theirs})")
    return found


def package_modules() -> dict[str, str]:
    return {module_name(p): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer() -> None:
    modules = package_modules()
    unassigned = [m for m in modules if m != ROOT and layer_of(m) is None]
    assert not unassigned, f"add these modules to a layer in LAYERS: {unassigned}"


def test_no_module_imports_a_higher_layer() -> None:
    found = [line for module, source in package_modules().items() for line in upward_imports(source, module)]
    assert not found, "imports reaching a higher layer:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "from mv2jax.models import create_model\n",
        "def f():\n    import mv2jax.convert.cli\n",
        "def f():\n    from mv2jax import train\n",
        "from ..models import load\n",
        "import importlib\nimportlib.import_module('mv2jax.validate')\n",
    ],
)
def test_a_planted_upward_import_is_caught(source: str) -> None:
    assert upward_imports(source, "mv2jax.weights.checkpoint"), source


def test_imports_within_a_layer_and_downward_pass() -> None:
    source = "from mv2jax.data import resolve_data_config\nfrom mv2jax.constants import IMAGENET_DEFAULT_MEAN\n"
    assert not upward_imports(source, "mv2jax.weights.checkpoint")


def test_importing_the_weights_loads_nothing_above_them() -> None:
    code = (
        "import sys, mv2jax.weights\n"
        "above = [m for m in sys.modules if m.startswith(('mv2jax.models', 'mv2jax.convert', 'mv2jax.train'))]\n"
        "assert not above, above\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
