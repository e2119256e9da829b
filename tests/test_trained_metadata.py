"""What a train.py checkpoint records travels with the model: one short train.py run on a tiny 3-class ImageFolder
(cat, dog, fish) records its class names and data config; validate needs no --model/--num-classes, evaluates at the
trained size and maps a split's folders to the model's classes by name (a split missing a class keeps its labels;
an unknown folder is one error line); the ONNX export's sidecar (schema 2) has the class names, the training size
and the run as its source, with no published tag; predict prints the folder names from the checkpoint and from the
artifact; --to-timm writes them as timm's label_names and timm loads the directory. Old (schema 1) sidecars still
read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from mv2jax.convert.cli import main as convert_main
from mv2jax.data import create_dataset
from mv2jax.data.imagenet import imagenet_class_names
from mv2jax.export import read_sidecar
from mv2jax.export.__main__ import main as export_main
from mv2jax.models import load_model
from mv2jax.predict import main as predict_main
from mv2jax.validate import build_parser as validate_parser
from mv2jax.validate import main as validate_main
from mv2jax.validate import validate_with_predictions

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("cat", "dog", "fish")
COLOURS = {"cat": (220, 40, 40), "dog": (40, 200, 40), "fish": (40, 40, 220), "bird": (200, 200, 40)}
# mobilenetv2_050's default tag is a published one (lamb_in1k): a fine-tune of it must not carry it.
MODEL, PUBLISHED_TAG, IMG_SIZE = "mobilenetv2_050", "lamb_in1k", 32
TIMEOUT = 400


def _images(folder: Path, names: tuple[str, ...], per_class: int) -> None:
    """`per_class` PNGs of each class's colour (with a little noise), in `folder/<name>/`."""
    rng = np.random.default_rng(len(names))
    for name in names:
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(COLOURS[name]) + rng.integers(-20, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i}.png")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> SimpleNamespace:
    """One epoch of train.py on train/{cat,dog,fish}; its validation split has no dog folder."""
    root = tmp_path_factory.mktemp("trained")
    data = root / "data"
    _images(data / "train", CLASSES, 4)
    _images(data / "validation", ("cat", "fish"), 2)
    cmd = [sys.executable, "train.py", "--data-dir", str(data), "--model", MODEL, "--img-size", str(IMG_SIZE)]
    cmd += ["-b", "4", "--epochs", "1", "-j", "0", "--output", str(root / "out"), "--experiment", "run"]
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(Path(tempfile.gettempdir()) / "mv2jax-test-compile-cache"),
    )
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    (step,) = (root / "out" / "run" / "checkpoints").iterdir()
    return SimpleNamespace(root=root, data=data, step=step, env=env)


def _one_error_line(capsys, prog: str) -> str:
    """The command's one error line on stderr (progress lines may come before it)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}:")]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: ") and "Traceback" not in err, err
    return lines[0]


def _ranked_names(lines: list[str]) -> list[tuple[str, int]]:
    """(name, class index) of each ranked line `  1.  45.00%  dog (1)` of predict's output."""
    ranked = [line.split("%  ", 1)[1] for line in lines if line.startswith("  ")]
    return [(text.rsplit(" (", 1)[0], int(text.rsplit(" (", 1)[1].rstrip(")"))) for text in ranked]


def test_an_image_folder_given_class_names_keeps_labels_when_a_class_is_missing_and_names_an_unknown_one(tmp_path):
    _images(tmp_path / "val", ("cat", "fish"), 1)
    folder = create_dataset("", str(tmp_path), split="validation", class_names=CLASSES)
    assert folder.class_names == CLASSES and [folder[i][1] for i in range(len(folder))] == [0, 2]
    assert create_dataset("", str(tmp_path), split="validation").class_names == ("cat", "fish")
    model_classes = dict(class_names=("cat", "dog"), classes_of="the model's classes")
    with pytest.raises(ValueError, match="folder 'fish' in .* is not one of the model's classes \\(cat, dog\\)"):
        create_dataset("", str(tmp_path), split="validation", **model_classes)


def test_train_py_records_the_class_names_and_data_config_and_no_published_tag(trained):
    meta = load_model(checkpoint_path=trained.step).meta
    assert meta.class_names == CLASSES and meta.num_classes == 3
    assert tuple(meta.data_config["input_size"]) == (3, IMG_SIZE, IMG_SIZE)
    assert meta.pretrained_tag is None and str(trained.step.absolute()) in meta.source


def test_validate_needs_no_model_flags_evaluates_at_the_trained_size_and_maps_folders_by_name(trained, capsys):
    argv = ["--checkpoint", str(trained.step), "--data-dir", str(trained.data), "-j", "0"]
    assert validate_main(argv) == 0
    results = json.loads(capsys.readouterr().out.split("--result\n", 1)[1])
    assert results["model"] == MODEL and results["img_size"] == IMG_SIZE and results["count"] == 4
    # the validation split has no dog: its fish are still class 2, and the score counts them as such
    _, preds = validate_with_predictions(validate_parser().parse_args(argv))
    assert preds.labels.tolist() == [0, 0, 2, 2]
    assert results["top1"] == pytest.approx(100 * preds.correct(1).mean())


def test_a_folder_that_is_not_a_class_of_the_model_is_one_error_line(trained, tmp_path, capsys):
    _images(tmp_path / "validation", ("cat", "bird"), 1)
    argv = ["--checkpoint", str(trained.step), "--data-dir", str(tmp_path), "-j", "0"]
    assert validate_main(argv) == 2
    assert "folder 'bird'" in _one_error_line(capsys, "mv2jax.validate")


def test_train_py_refuses_an_eval_folder_that_is_not_a_train_class(trained, tmp_path):
    _images(tmp_path / "train", ("cat", "dog"), 1)
    _images(tmp_path / "validation", ("bird",), 1)
    cmd = [sys.executable, "train.py", "--data-dir", str(tmp_path), "--model", MODEL, "--output", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=trained.env, capture_output=True, text=True, timeout=TIMEOUT)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("train.py:")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "folder 'bird'" in lines[0] and "the train split's classes" in lines[0]


@pytest.fixture(scope="module")
def artifact(trained) -> Path:
    out = trained.root / "export" / "m.onnx"
    assert export_main(["--checkpoint", str(trained.step), "--format", "onnx", "--output", str(out)]) == 0
    return out


def test_the_sidecar_has_the_class_names_the_training_size_and_the_run_not_a_published_tag(trained, artifact):
    text = Path(f"{artifact}.json").read_text()
    sidecar = json.loads(text)
    assert sidecar["schema"] == 2 and sidecar["class_names"] == list(CLASSES) and sidecar["num_classes"] == 3
    assert sidecar["input_size"] == [3, IMG_SIZE, IMG_SIZE] and sidecar["model"] == MODEL
    assert str(trained.step.absolute()) in sidecar["source"] and PUBLISHED_TAG not in text


@pytest.mark.parametrize("source", ["artifact", "checkpoint"])
def test_predict_prints_the_folder_names(trained, artifact, capsys, source):
    image = trained.data / "train" / "dog" / "0.png"
    flags = ["--artifact", str(artifact)] if source == "artifact" else ["--checkpoint", str(trained.step)]
    assert predict_main([str(image), *flags]) == 0
    ranked = _ranked_names(capsys.readouterr().out.splitlines())
    assert sorted(ranked) == [(name, i) for i, name in enumerate(CLASSES)]  # 3 classes: all ranked, each named


@pytest.mark.parametrize("labels, names", [(None, None), ("imagenet-1k", list(imagenet_class_names()))])
def test_a_schema_1_sidecar_reads_as_schema_2(artifact, tmp_path, labels, names):
    old = tmp_path / "old.onnx"
    old.write_bytes(artifact.read_bytes())
    sidecar = json.loads(Path(f"{artifact}.json").read_text())
    for key in ("schema", "source", "class_names"):
        del sidecar[key]
    Path(f"{old}.json").write_text(json.dumps({**sidecar, "labels": labels}))
    read = read_sidecar(old)
    assert read["schema"] == 2 and read["class_names"] == names and read["source"] is None and "labels" not in read


def test_to_timm_writes_label_names_and_the_training_preprocessing_and_timm_loads_it(trained):
    timm = pytest.importorskip("timm")
    out = trained.root / "hf" / "model.safetensors"
    assert convert_main(["--to-timm", "--input", str(trained.step), "--output", str(out)]) == 0
    config = json.loads((out.parent / "config.json").read_text())
    assert config["label_names"] == list(CLASSES) and config["num_classes"] == 3
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, IMG_SIZE, IMG_SIZE] and "tag" not in cfg and PUBLISHED_TAG not in json.dumps(cfg)
    assert str(trained.step.absolute()) in cfg["description"]
    model = timm.create_model(f"local-dir:{out.parent}", pretrained=True)
    assert model.num_classes == 3 and tuple(model.pretrained_cfg["label_names"]) == CLASSES
