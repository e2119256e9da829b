"""Suite-wide collection rules.

Most tests compare against the real timm package (and so torch). Where those are not installed (CI's Python 3.12
stage, which runs the `numerics` tests without the multi-gigabyte torch download), a test module that imports
them, directly or through a `tests.*` helper, cannot even be imported: it is not collected, and its tests carry
the `timm` marker wherever it is collected, so `-m "not timm"` selects the same tests in both environments.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import signal
from pathlib import Path

import pytest

# A shell without job control starts background commands (`cmd &`, as a CI runner may) with SIGINT ignored, and
# Python then installs no KeyboardInterrupt handler, in this process or in the commands the tests start. The Ctrl-C
# tests need a terminal's behaviour: restore it (a Python handler is reset to the default in every child at exec).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
NEEDS = ("timm", "torch", "torchvision")
HAVE_TIMM = all(importlib.util.find_spec(name) is not None for name in NEEDS[:2])


@functools.cache
def needs_timm(path: Path) -> bool:
    """Whether importing the module at `path` imports timm/torch at its top level, itself or through the
    `tests.*` modules it imports (imports inside functions do not count: they run only in that test)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in tree.body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in NEEDS:
                return True
            if name.split(".")[0] == "tests":
                target = REPO.joinpath(*name.split("."))
                module = target.with_suffix(".py")
                if module.is_file() and needs_timm(module):
                    return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if HAVE_TIMM:
        return None
    conftest = collection_path / "conftest.py" if collection_path.is_dir() else None
    if conftest is not None and conftest.is_file() and needs_timm(conftest):
        return True
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_") and needs_timm(collection_path):
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.path))
        conftests = [p / "conftest.py" for p in path.parents if p == TESTS or TESTS in p.parents]
        if needs_timm(path) or any(c.is_file() and needs_timm(c) for c in conftests):
            item.add_marker(pytest.mark.timm)
