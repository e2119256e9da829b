"""No torch needed: in a Python where `import torch` fails, every mv2jax module imports without it, and a model
loads from a safetensors checkpoint, trains a step, validates, converts to mv2jax and back, and exports (ONNX,
StableHLO; LiteRT where litert-converter is installed) to artifacts that predict runs.

The child process gets a `sitecustomize` that makes importing torch raise ModuleNotFoundError, as on a machine
without it. The safetensors checkpoint is timm's own, written by this (parent) process, which has torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import timm
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
NAME, NUM_CLASSES = "mobilenetv2_035", 10  # the digits' classes, for validate

BLOCK_TORCH = '''
import sys


class _NoTorch:
    """Importing torch (or any torch.*) fails, as where it is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by this test)", name=name)
        return None


sys.meta_path.insert(0, _NoTorch())
'''

CHILD = """
import importlib
import pkgutil
import sys
from pathlib import Path

import numpy as np

try:
    import torch  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the torch block did not work")

import mv2jax, mv2jax.models, mv2jax.convert, mv2jax.train, mv2jax.data, mv2jax.benchmark  # noqa: E401
assert "torch" not in sys.modules, "importing the package imported torch"
for info in pkgutil.walk_packages(mv2jax.__path__, "mv2jax."):
    importlib.import_module(info.name)
assert "torch" not in sys.modules, "some mv2jax module imports torch"
print("imports ok", flush=True)

ckpt, work = Path(sys.argv[1]), Path(sys.argv[2])
NAME, NUM_CLASSES = sys.argv[3], int(sys.argv[4])

# create_model from timm's safetensors file, strictly, every tensor exactly
from mv2jax.convert import mv2jax_to_timm, read_checkpoint

source = read_checkpoint(ckpt)
model = mv2jax.create_model(NAME, num_classes=NUM_CLASSES, checkpoint_path=ckpt)
got = mv2jax_to_timm(model)
assert sorted(got) == sorted(source)
for k, v in source.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)
print("create_model ok", flush=True)

# one train step (RMSpropTF + EMA + label smoothing) on tiny images
import jax
from mv2jax.train.optim import create_optimizer
from mv2jax.train.state import create_train_state
from mv2jax.train.step import StepConfig, make_train_step

tx = create_optimizer("rmsproptf", 1e-3, params=None, weight_decay=1e-5, eps=1e-3)
graphdef, state = create_train_state(model.train(), tx, use_ema=True)
rng = np.random.default_rng(0)
batch = {"image": rng.standard_normal((4, 32, 32, 3)).astype(np.float32), "label": np.arange(4, dtype=np.int32)}
step = make_train_step(graphdef, tx, 1e-3, StepConfig())
new_state, metrics = step(state, batch)
assert int(new_state.step) == 1 and np.isfinite(float(metrics["loss"])), metrics
print("train step ok", flush=True)

# validate's eval step, through its CLI, on the embedded digits
from mv2jax import validate

flags = ["--model", NAME, "--checkpoint", str(ckpt), "--num-classes", str(NUM_CLASSES), "--dataset", "digits"]
flags += ["--img-size", "32", "-b", "128", "-j", "0", "--results-file", str(work / "results.json")]
code = validate.main(flags)
assert code == 0, code
assert (work / "results.json").is_file()
print("validate ok", flush=True)

# converter round trip: timm file -> mv2jax checkpoint -> timm file, exact
from mv2jax.convert import cli

assert cli.main(["--model", NAME, "--checkpoint", str(ckpt), "--output", str(work / "converted")]) == 0
out = work / "export" / "model.safetensors"
assert cli.main(["--to-timm", "--input", str(work / "converted"), "--output", str(out)]) == 0
back = read_checkpoint(out)
assert sorted(back) == sorted(source)
for k, v in source.items():
    assert back[k].dtype == v.dtype, k
    np.testing.assert_array_equal(back[k], v, err_msg=k)
assert "torch" not in sys.modules
print("convert ok", flush=True)

# export: ONNX and StableHLO (and LiteRT where litert-converter is installed), each then run by predict
import importlib.util

from mv2jax import predict
from mv2jax.convert.verify import photo_path
from mv2jax.export.__main__ import main as export

formats = ["onnx", "stablehlo"] + (["tflite"] if importlib.util.find_spec("litert_converter") else [])
for fmt in formats:
    artifact = work / f"model.{fmt}"
    assert export(["--model", NAME, "--checkpoint", str(ckpt), "--format", fmt, "--output", str(artifact)]) == 0
    assert predict.main([str(photo_path(None)), "--artifact", str(artifact)]) == 0
assert "torch" not in sys.modules and "timm" not in sys.modules
print("export ok", flush=True)
"""


def test_everything_but_verify_runs_without_torch(tmp_path: Path) -> None:
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(textwrap.dedent(BLOCK_TORCH))
    ckpt = tmp_path / "model.safetensors"
    save_file(timm.create_model(NAME, num_classes=NUM_CLASSES).state_dict(), str(ckpt))
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(block), str(REPO)]), HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(ckpt), str(work), NAME, str(NUM_CLASSES)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    for what in ("imports", "create_model", "train step", "validate", "convert", "export"):
        assert f"{what} ok" in done.stdout, out[-4000:]
