"""The import layering that keeps `mv2jax.models` and `mv2jax.convert` out of a cycle: the checkpoint readers and
the state-dict mapping (`mv2jax.convert` and the modules it imports) sit below the models, which import them at
module level; the converters (`from_timm`, `to_timm`, `verify`, `cli`) sit above both."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BELOW_MODELS = ("mv2jax.convert", "mv2jax.convert.checkpoint", "mv2jax.convert.state_dict", "mv2jax.convert.files")


@pytest.mark.parametrize("module", BELOW_MODELS)
def test_readers_and_mapping_never_import_the_models(module: str) -> None:
    code = f"import sys, {module}\nassert 'mv2jax.models' not in sys.modules, sorted(sys.modules)\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_models_import_the_readers_but_not_the_converters() -> None:
    code = (
        "import sys, mv2jax.models\n"
        "assert 'mv2jax.convert.checkpoint' in sys.modules\n"
        "assert not [m for m in ('from_timm', 'to_timm', 'verify', 'cli') if f'mv2jax.convert.{m}' in sys.modules]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
