"""timm's fine-tuning flags through `python train.py`, with timm's meaning: `--pretrained --pretrained-path FILE`
loads FILE as the pretrained weights with a new classifier (even for the same class count); `--initial-checkpoint`
is a strict load whose classifier-only misfit names the fine-tuning flags; `--pretrained-path` alone does nothing
but warn; a train.py step directory gives its raw (not EMA) weights. The run log says what was loaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.numpy import load_file
from safetensors.torch import save_file

from mv2jax.convert import mv2jax_to_timm
from mv2jax.train.config import parse_config
from mv2jax.train.run import _create_model
from mv2jax.weights import read_orbax_weights
from tests.train.test_checkpoint import REPO, TIMEOUT, _env

MODEL = "mobilenetv2_035"
CLASSES = ("cat", "dog", "emu")
# A step directory train.py wrote (mobilenetv2_035, 10 classes, with EMA weights beside the raw ones).
STEP_DIR = REPO / "tests" / "train" / "data" / "checkpoint_8886536" / "2"
CLASSIFIER = ("classifier.weight", "classifier.bias")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A 3-class ImageFolder of 32 px images, and timm-written safetensors files of 10 and 1000 classes."""
    root = tmp_path_factory.mktemp("finetune")
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("validation", 2)):
        for name in CLASSES:
            (root / "data" / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / "data" / split / name / f"{i}.png")
    out = {"data": root / "data", "root": root}
    torch.manual_seed(0)
    for classes in (10, 1000):
        tmodel = timm.create_model(MODEL, num_classes=classes)
        torch.nn.init.normal_(tmodel.classifier.bias)  # timm's is zeros, as a fresh one: make the file's its own
        out[f"timm{classes}"] = root / f"timm{classes}.safetensors"
        save_file({k: v.contiguous() for k, v in tmodel.state_dict().items()}, str(out[f"timm{classes}"]))
    return out


def _flags(files: dict[str, Path], *extra: object) -> list[str]:
    return [
        *("--data-dir", str(files["data"]), "--model", MODEL, "--img-size", "32", "-b", "4", "-j", "0"),
        *("--epochs", "1", "--steps-per-epoch", "2", "--output", str(files["root"] / "runs")),
        *map(str, extra),
    ]


@pytest.fixture(scope="module")
def runs(files) -> dict[str, subprocess.CompletedProcess]:
    """Three train.py runs at once: fine-tuning a 10-class file on 3 classes, the strict load of that file, and a
    step directory's strict load with a --pretrained-path that --pretrained does not enable."""
    cases = {
        "pretrained_path": ["--pretrained", "--pretrained-path", files["timm10"], "--num-classes", 3],
        "initial_checkpoint": ["--initial-checkpoint", files["timm10"], "--num-classes", 3],
        "step_dir": ["--pretrained-path", files["timm10"], "--initial-checkpoint", STEP_DIR, "--num-classes", 10],
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, "train.py", *_flags(files, "--experiment", name, *flags)],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, flags in cases.items()
    }
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=TIMEOUT)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


def test_pretrained_path_trains_with_a_new_classifier_and_the_log_says_what_was_loaded(runs, files):
    run = runs["pretrained_path"]
    assert run.returncode == 0, run.stderr[-3000:]
    # 314 tensors in mobilenetv2_035 (timm's state dict), all but the classifier's two from the file
    line = f"Initial weights: {files['timm10']}: 312 tensors loaded; re-initialised: classifier.weight, classifier.bias"
    assert line in run.stdout.splitlines(), run.stdout[-3000:]
    assert (files["root"] / "runs" / "pretrained_path" / "checkpoints" / "2").is_dir()


def test_initial_checkpoint_with_another_class_count_is_one_line_naming_the_finetuning_flags(runs, files):
    run = runs["initial_checkpoint"]
    assert run.returncode == 2, run.stderr[-3000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: --initial-checkpoint "), run.stderr[-3000:]
    assert "classifier has 10 classes, not the model's 3" in lines[0]
    assert f"pass --pretrained --pretrained-path {files['timm10']} instead" in lines[0]
    assert not (files["root"] / "runs" / "initial_checkpoint").exists()  # refused before any output


def test_pretrained_path_without_pretrained_warns_once_and_a_step_dir_loads_strictly(runs, files):
    run = runs["step_dir"]
    assert run.returncode == 0, run.stderr[-3000:]
    warnings = [line for line in run.stderr.splitlines() if line.startswith("train.py: warning:")]
    assert warnings == [
        f"train.py: warning: --pretrained-path {files['timm10']} does nothing without --pretrained (as in timm)"
    ]
    line = f"Initial weights: {STEP_DIR.absolute()} (model weights): 314 tensors loaded"
    assert line in run.stdout.splitlines(), run.stdout[-3000:]


def _loaded(files, *flags: object, num_classes: int):
    return _create_model(parse_config(_flags(files, *flags)), num_classes)


def test_pretrained_path_reinitialises_the_classifier_even_for_the_same_class_count(files):
    """timm's --pretrained-path overlay sets num_classes=-1: a 1000-class file (the class count of the model's
    pretrained cfg, which `--pretrained` alone would keep the classifier for) into a 1000-class model gets a new
    head."""
    loaded = _loaded(files, "--pretrained", "--pretrained-path", files["timm1000"], num_classes=1000)
    ours = mv2jax_to_timm(loaded.model)
    source = load_file(files["timm1000"])
    assert set(loaded.meta.loaded) == set(source) - set(CLASSIFIER) and loaded.meta.reinitialised == CLASSIFIER
    for key in loaded.meta.loaded:
        np.testing.assert_array_equal(ours[key], source[key], err_msg=key)
    for key in CLASSIFIER:
        assert ours[key].shape == source[key].shape and not np.allclose(ours[key], source[key]), key


def test_a_step_directory_gives_its_raw_weights_not_its_ema(files):
    loaded = _loaded(files, "--initial-checkpoint", STEP_DIR, "--num-classes", 10, num_classes=10)
    ours = mv2jax_to_timm(loaded.model)
    raw, _ = read_orbax_weights(STEP_DIR, use_ema=False)
    ema, _ = read_orbax_weights(STEP_DIR, use_ema=True)
    assert loaded.meta.reinitialised == () and set(loaded.meta.loaded) == set(ours)
    for key in ours:
        np.testing.assert_array_equal(ours[key], raw[key], err_msg=key)
    assert not np.array_equal(ours["conv_stem.weight"], ema["conv_stem.weight"])


def test_pretrained_with_initial_checkpoint_warns_that_the_strict_load_replaces_it(files, capsys):
    config = parse_config(_flags(files, "--pretrained", "--initial-checkpoint", STEP_DIR))
    assert config.pretrained and config.initial_checkpoint == str(STEP_DIR)
    assert capsys.readouterr().err.splitlines() == [
        "train.py: warning: --initial-checkpoint is a strict load that replaces every weight of --pretrained "
        "(as in timm): those are not read"
    ]
