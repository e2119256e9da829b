"""Checkpoints written by an earlier mv2jax keep working: a train.py step directory resumes through the CLI and
trains on, and a convert_weights.py checkpoint loads, holding exactly the weights it was converted from.

Both were written by mv2jax at commit 8886536 (before the backend seam), so a change of the on-disk format or of
the parameter layout fails here. How they were made (from a checkout of that commit, on PYTHONPATH):

    python train.py --model mobilenetv2_035 --dataset digits --img-size 32 -b 8 --epochs 2 --steps-per-epoch 1 \
        --model-ema --output out --experiment r --compile-cache '' -j 0 --checkpoint-hist 1
    python -c 'from tests.train.test_old_checkpoints import write_source; write_source("timm035.safetensors")'
    python convert_weights.py --model mobilenetv2_035 --checkpoint timm035.safetensors --output converted

then `out/r/checkpoints/2` without what resuming does not read (orbax's `commit_success.txt` files, which name the
machine's directory, `metrics/`, `_sharding` and `array_metadatas/`), and the converted meta's `source` cut to the
file name.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import mv2jax
from mv2jax.convert import read_checkpoint, read_orbax
from mv2jax.train.ema import ema_decay
from mv2jax.weights import mv2jax_to_timm

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
TRAIN_STEP_DIR = DATA / "checkpoint_8886536" / "2"
CONVERTED_DIR = DATA / "converted_8886536"
NAME, NUM_CLASSES = "mobilenetv2_035", 10
RESUME_FLAGS = [
    "--model",
    NAME,
    "--dataset",
    "digits",
    "--img-size",
    "32",
    "-b",
    "8",
    "--steps-per-epoch",
    "1",
    "--model-ema",
    "--compile-cache",
    "",
    "-j",
    "0",
    "--log-interval",
    "1",
]


def source_state_dict() -> dict[str, np.ndarray]:
    """The timm state dict the converted checkpoint was made from: timm's names and shapes for the model, values
    drawn from a generator seeded by each name (so they do not depend on timm's initialisation)."""
    import timm

    reference = timm.create_model(NAME, num_classes=NUM_CLASSES).state_dict()
    out = {}
    for name, tensor in reference.items():
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        shape = tuple(tensor.shape)
        if name.endswith("num_batches_tracked"):
            out[name] = np.asarray(3, np.int64)
        elif name.endswith("running_var"):
            out[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            out[name] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return out


def write_source(path: str | Path) -> None:
    from safetensors.numpy import save_file

    save_file(source_state_dict(), str(path), metadata={"format": "pt"})


def test_old_train_checkpoint_resumes_through_the_cli(tmp_path: Path) -> None:
    step_dir = tmp_path / "old" / "2"
    shutil.copytree(TRAIN_STEP_DIR, step_dir)  # resume only reads, but never risk the committed copy
    saved = read_checkpoint(step_dir)
    saved_meta = json.loads((step_dir / "meta" / "metadata").read_text())
    out = tmp_path / "out"
    cmd = [sys.executable, "train.py", "--resume", str(step_dir), "--epochs", "3", *RESUME_FLAGS]
    cmd += ["--output", str(out), "--experiment", "r"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"Resumed from {step_dir} at epoch 2, update 2" in done.stdout, done.stdout
    new_step = out / "r" / "checkpoints" / "3"  # exactly one more update
    assert new_step.is_dir(), sorted(p.name for p in (out / "r" / "checkpoints").iterdir())
    meta = json.loads((new_step / "meta" / "metadata").read_text())
    assert meta["epoch"] == 3 and meta["has_ema"] and meta["model_name"] == NAME
    assert meta["steps_per_epoch"] == saved_meta["steps_per_epoch"] == 1
    # the EMA went on from the saved EMA (not from a copy of the weights): ema3 = lerp(ema2, model3, 1 - decay)
    ema_saved, model_new = read_checkpoint(step_dir, use_ema=True), read_checkpoint(new_step)
    ema_new = read_checkpoint(new_step, use_ema=True)
    weight = 1.0 - ema_decay(3, saved_meta["config"]["model_ema_decay"])
    assert sorted(model_new) == sorted(saved)
    moved = 0
    for k in (k for k in saved if k.endswith((".weight", ".bias"))):
        a, b = ema_saved[k].astype(np.float64), model_new[k].astype(np.float64)
        exact = a + weight * (b - a)
        # float32 lerp: the rounding of each operation, at the operands' magnitude
        bound = 4 * np.finfo(np.float32).eps * np.maximum(np.abs(a), np.abs(b))
        assert np.all(np.abs(ema_new[k] - exact) <= bound), k
        moved += not np.array_equal(model_new[k], saved[k])
    assert moved, "the resumed update changed no weight"


def test_old_train_checkpoint_reads_as_a_weights_checkpoint() -> None:
    model = mv2jax.create_model(NAME, num_classes=NUM_CLASSES, checkpoint_path=TRAIN_STEP_DIR)
    got = mv2jax_to_timm(model)
    ref = read_checkpoint(TRAIN_STEP_DIR)
    assert sorted(got) == sorted(ref)
    for k, v in ref.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    ema = read_checkpoint(TRAIN_STEP_DIR, use_ema=True)
    assert any(not np.array_equal(ema[k], ref[k]) for k in ref if k.endswith("weight"))


@pytest.mark.timm  # the source weights take their names and shapes from timm
@pytest.mark.parametrize("how", ["read_checkpoint", "create_model", "read_orbax"])
def test_old_converted_checkpoint_loads(how: str) -> None:
    source = source_state_dict()
    if how == "read_checkpoint":
        got = read_checkpoint(CONVERTED_DIR)
    elif how == "create_model":
        got = mv2jax_to_timm(mv2jax.create_model(NAME, num_classes=NUM_CLASSES, checkpoint_path=CONVERTED_DIR))
    else:
        state, meta = read_orbax(CONVERTED_DIR)
        assert meta["model_name"] == NAME and meta["num_classes"] == NUM_CLASSES, meta
        assert sorted(state) == ["model"]
        got = read_checkpoint(CONVERTED_DIR)
    assert sorted(got) == sorted(source)
    for k, v in source.items():
        assert got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v.astype(got[k].dtype), err_msg=k)
