"""`python -m mv2jax.validate` against timm's own evaluation of the same weights on the same image folder.

The folder holds 30 real photographs (crops, flips and rescales of scikit-learn's china.jpg and flower.jpg, from
60 px to 600 px, portrait and landscape, JPEG and PNG), so timm's resize + centre crop matters. The weights are a
timm `mobilenetv2_035` with randomised BatchNorm statistics and a head calibrated so predictions spread over the
classes (a constant prediction would make the per-image comparison vacuous), saved with safetensors. timm
evaluates them with its own eval transform, dataset and `accuracy`/`AverageMeter` (validate.py's loop); mv2jax
must give the same per-image top-k class ids, the same correct counts and the loss to 1e-5.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import timm.data
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.utils import AverageMeter, accuracy

from mv2jax.validate import build_parser, main, validate_with_predictions, write_results
from tests.timm_reference import timm_model

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL = "mobilenetv2_035"
NUM_IMAGES = 30
BATCH = 8  # 30 = 3 x 8 + 6: the last batch is padded with 2 masked examples
TIMM_RESULT_KEYS = [
    "model",
    "top1",
    "top1_err",
    "top5",
    "top5_err",
    "param_count",
    "img_size",
    "crop_pct",
    "interpolation",
]
PROG = "mv2jax.validate"  # the name in its error lines
# Weight seeds per class count, chosen so that no image has a near-tie among its top logits (asserted below).
SEEDS = {3: 3, 10: 11}


def _photo(name: str) -> Image.Image:
    images = Path(importlib.util.find_spec("sklearn").submodule_search_locations[0]) / "datasets" / "images"
    return Image.open(images / f"{name}.jpg").convert("RGB")  # 640 x 427


def _variant(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random crop (10%-100% of each side), maybe mirrored or transposed, rescaled to 60-600 px sides."""
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.1, 1.0)), int(h * rng.uniform(0.1, 1.0))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = img.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.3:
        out = out.transpose(Image.Transpose.TRANSPOSE)  # landscape <-> portrait
    size = (int(rng.integers(60, 600)), int(rng.integers(60, 600)))
    return out.resize(size, Image.Resampling.BILINEAR)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """root/validation/{china,flower,mixed}/img{0,3,..,27}: 3 classes x 10 images (natural order: img3 < img12)."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    photos = {"china": [_photo("china")], "flower": [_photo("flower")], "mixed": [_photo("china"), _photo("flower")]}
    for cls, sources in photos.items():
        folder = root / "validation" / cls
        folder.mkdir(parents=True)
        for i in range(NUM_IMAGES // len(photos)):
            img = _variant(sources[i % len(sources)], rng)
            name = folder / f"img{3 * i}"
            img.save(name.with_suffix(".png")) if i % 4 == 3 else img.save(name.with_suffix(".jpg"), quality=90)
    return root


def _timm_dataset(root: Path, tmodel: torch.nn.Module):
    """timm's ImageFolder dataset with timm's eval transform resolved from the model."""
    dataset = timm.data.create_dataset("", root=str(root), split="validation")
    dataset.transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=tmodel))
    return dataset


@pytest.fixture(scope="module")
def eval_images(data_dir) -> torch.Tensor:
    """All images through timm's eval transform, NCHW (for calibrating heads)."""
    dataset = _timm_dataset(data_dir, timm.create_model(MODEL))
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def _calibrate_head(tmodel: torch.nn.Module, images: torch.Tensor, seed: int, directions: int = 4) -> None:
    """Classifier = random combinations of the top principal directions of the centred pooled features, scaled
    to logits of std ~2 (in place). Predictions then spread over the classes, and the logits stay well
    conditioned: the images differ most along those directions, so float32 rounding matters least there."""
    with torch.inference_mode():
        feats = tmodel.forward_head(tmodel.forward_features(images), pre_logits=True)
        centred = feats - feats.mean(0)
        top = torch.linalg.svd(centred, full_matrices=False).Vh[:directions]
        w = torch.randn(tmodel.num_classes, directions, generator=torch.Generator().manual_seed(seed)) @ top
        w *= 2.0 / (centred @ w.T).std()
        tmodel.classifier.weight.copy_(w)
        tmodel.classifier.bias.copy_(-w @ feats.mean(0))


def timm_validate(tmodel: torch.nn.Module, root: Path, batch_size: int) -> dict:
    """timm validate.py's loop (CrossEntropyLoss, `accuracy(topk=(1, 5))`, AverageMeters), plus per-image
    top-k class ids, labels and logits."""
    loader = torch.utils.data.DataLoader(_timm_dataset(root, tmodel), batch_size=batch_size, shuffle=False)
    criterion = torch.nn.CrossEntropyLoss()
    losses, top1, top5 = AverageMeter(), AverageMeter(), AverageMeter()
    k = min(5, tmodel.num_classes)
    topk, labels, logits = [], [], []
    with torch.inference_mode():
        for images, target in loader:
            output = tmodel(images)
            acc1, acc5 = accuracy(output, target, topk=(1, 5))
            losses.update(criterion(output, target).item(), images.shape[0])
            top1.update(acc1.item(), images.shape[0])
            top5.update(acc5.item(), images.shape[0])
            topk.append(output.topk(k, 1, True, True).indices.numpy())
            labels.append(target.numpy())
            logits.append(output.numpy())
    return {
        "top1": top1.avg,
        "top5": top5.avg,
        "loss": losses.avg,
        "count": top1.count,
        "k": k,
        "topk": np.concatenate(topk),
        "labels": np.concatenate(labels),
        "logits": np.concatenate(logits),
    }


def _write_checkpoint(num_classes: int, data_dir: Path, images: torch.Tensor, folder: Path) -> dict:
    """A safetensors checkpoint of a timm model and timm's own evaluation of it."""
    tmodel = timm_model(MODEL, seed=SEEDS[num_classes], num_classes=num_classes)
    _calibrate_head(tmodel, images, seed=SEEDS[num_classes])
    path = folder / f"{MODEL}_{num_classes}.safetensors"
    save_file({k: v.contiguous() for k, v in tmodel.state_dict().items()}, str(path))
    ref = timm_validate(tmodel, data_dir, BATCH)
    # The comparison of rankings is well posed only without near-ties among the top k (+1) logits.
    ranked = -np.sort(-ref["logits"], axis=1)[:, : ref["k"] + 1]
    assert np.diff(-ranked, axis=1).min() > 1e-3
    param_count = sum(p.numel() for p in tmodel.parameters())
    return {"path": path, "num_classes": num_classes, "ref": ref, "param_count": param_count}


@pytest.fixture(scope="module")
def checkpoints(data_dir, eval_images, tmp_path_factory):
    """`checkpoints(num_classes)`: written once per class count (3, or 10 so that top-5 is not trivially 100%)."""
    folder, made = tmp_path_factory.mktemp("ckpt"), {}

    def get(num_classes: int) -> dict:
        if num_classes not in made:
            made[num_classes] = _write_checkpoint(num_classes, data_dir, eval_images, folder)
        return made[num_classes]

    return get


@pytest.fixture(scope="module")
def checkpoint(checkpoints) -> dict:
    return checkpoints(3)


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args([str(a) for a in argv])


@pytest.mark.parametrize("num_classes", [3, 10])
def test_checkpoint_gives_timms_per_image_predictions_counts_and_loss(checkpoints, num_classes, data_dir):
    checkpoint = checkpoints(num_classes)
    args = _args(
        "--model",
        MODEL,
        "--checkpoint",
        checkpoint["path"],
        "--data-dir",
        data_dir,
        "-b",
        BATCH,
        "-j",
        0,
        "--num-classes",
        checkpoint["num_classes"],
    )
    results, preds = validate_with_predictions(args)
    ref = checkpoint["ref"]
    # every example exactly once, in timm's (natural-sort) order, with timm's labels
    assert results["count"] == ref["count"] == NUM_IMAGES
    np.testing.assert_array_equal(preds.labels, ref["labels"])
    # the same top-k class ids for every image, best first
    assert preds.topk.shape == (NUM_IMAGES, ref["k"])
    np.testing.assert_array_equal(preds.topk, ref["topk"])
    correct1, correct5 = int(preds.correct(1).sum()), int(preds.correct(5).sum())
    assert correct1 == round(ref["top1"] * NUM_IMAGES / 100) and correct5 == round(ref["top5"] * NUM_IMAGES / 100)
    assert results["top1"] == round(ref["top1"], 4) and results["top5"] == round(ref["top5"], 4)
    assert len(set(preds.topk[:, 0])) > 1, "the head should not predict one class for every image"
    if checkpoint["num_classes"] > 5:
        assert 0 < correct5 < NUM_IMAGES, "top-5 of 10 classes should be a real test"
    assert results["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    # timm's result dict, plus loss and count
    assert list(results) == TIMM_RESULT_KEYS + ["loss", "count"]
    assert results["top1_err"] == round(100 - ref["top1"], 4)
    assert results["param_count"] == round(checkpoint["param_count"] / 1e6, 2)
    assert (results["img_size"], results["crop_pct"], results["interpolation"]) == (224, 0.875, "bicubic")


def test_cli_runs_end_to_end_with_a_worker_process_and_writes_the_results_file(checkpoint, data_dir, tmp_path):
    out = tmp_path / "results.json"
    cmd = [
        sys.executable,
        "-m",
        "mv2jax.validate",
        "--model",
        MODEL,
        "--checkpoint",
        str(checkpoint["path"]),
        "--data-dir",
        str(data_dir),
        "-b",
        str(BATCH),
        "-j",
        "1",
        "--num-classes",
        "3",
        "--log-freq",
        "2",
        "--results-file",
        str(out),
    ]
    proc = subprocess.run(
        cmd,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Test: [   0/4]" in proc.stderr and "Test: [   3/4]" in proc.stderr and " * Acc@1 " in proc.stderr
    # the worker's batches came through shared memory, and none is left for Python's resource tracker to report
    assert "leaked" not in proc.stderr and "resource_tracker" not in proc.stderr, proc.stderr[-3000:]
    printed = json.loads(proc.stdout.split("--result\n", 1)[1])
    written = json.loads(out.read_text())
    assert printed == written
    assert written["count"] == NUM_IMAGES and written["model"] == MODEL
    assert written["top1"] == round(checkpoint["ref"]["top1"], 4)
    assert written["loss"] == pytest.approx(checkpoint["ref"]["loss"], rel=1e-5)


def test_an_unknown_flag_is_one_line_and_exit_code_2():
    cmd = [sys.executable, "-m", "mv2jax.validate", "--model", MODEL, "--no-such-flag"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"{PROG}: error: unrecognized arguments: --no-such-flag (see --help)"]


def _run_main(capsys, *argv) -> tuple[int, str]:
    """(exit code, last stderr line) of an in-process `main`; asserts no traceback was printed."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.strip().splitlines()[-1]


def test_corrupt_jpeg_is_a_one_line_error_naming_the_file(checkpoint, data_dir, tmp_path, capsys):
    folder = tmp_path / "validation"
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        _variant(_photo("china"), np.random.default_rng(1)).save(folder / cls / "good.jpg")
    bad = folder / "b" / "bad.jpg"
    bad.write_bytes((folder / "a" / "good.jpg").read_bytes()[:2000])  # a truncated JPEG
    code, line = _run_main(
        capsys,
        "--model",
        MODEL,
        "--checkpoint",
        checkpoint["path"],
        "--data-dir",
        tmp_path,
        "-b",
        2,
        "-j",
        0,
        "--num-classes",
        3,
    )
    assert code == 2
    assert line.startswith(f"{PROG}: error: unreadable image {bad}: ")


def test_unknown_model_missing_dir_wrong_head_and_missing_checkpoint_are_one_line_errors(checkpoint, tmp_path, capsys):
    ckpt = ("--checkpoint", checkpoint["path"])
    code, line = _run_main(capsys, "--model", "resnet50", *ckpt, "--data-dir", tmp_path)
    assert code == 2 and line.startswith(f"{PROG}: error: unknown model 'resnet50': mv2jax has mobilenetv2_035")
    missing = tmp_path / "no_such_dir"
    code, line = _run_main(capsys, "--model", MODEL, *ckpt, "--num-classes", 3, "--data-dir", missing)
    assert code == 2 and line == f"{PROG}: error: --data-dir {missing}: no such file or directory"
    code, line = _run_main(capsys, "--model", MODEL, *ckpt, "--num-classes", 5, "--data-dir", tmp_path)
    assert code == 2 and line.startswith(f"{PROG}: error: checkpoint does not fit mobilenetv2_035: ")
    assert "classifier.weight (3, 1280) vs model (5, 1280)" in line
    code, line = _run_main(capsys, "--model", MODEL, *ckpt, "--num-classes", 3, "--dataset", "digits")
    assert code == 2 and line.endswith(
        "the dataset has 10 classes, mobilenetv2_035 has 3 outputs: pass "
        "--num-classes (and weights) that cover its labels"
    )
    code, line = _run_main(
        capsys, "--model", MODEL, "--checkpoint", tmp_path / "nope.safetensors", "--data-dir", tmp_path
    )
    missing = tmp_path / "nope.safetensors"
    assert code == 2 and line == f"{PROG}: error: --checkpoint {missing}: no such file or directory"


def test_an_mv2jax_checkpoint_directory_names_its_model_and_class_count(checkpoint, tmp_path, capsys):
    from mv2jax.convert.from_timm import import_from_timm

    _, directory = import_from_timm(MODEL, tmp_path / "converted", checkpoint=checkpoint["path"])
    code, line = _run_main(capsys, "--checkpoint", directory, "--dataset", "digits")  # no --model, no --num-classes
    assert code == 2 and line.endswith(
        "the dataset has 10 classes, mobilenetv2_035 has 3 outputs: pass "
        "--num-classes (and weights) that cover its labels"
    )


def test_pretrained_without_hub_access_fails_fast_with_a_clear_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as with no network: cache only
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    start = time.time()
    code, line = _run_main(capsys, "--model", "mobilenetv2_100", "--pretrained", "--data-dir", tmp_path)
    assert code == 2 and time.time() - start < 10  # no retries, no model built for the weights
    assert line.startswith(f"{PROG}: error: could not get ")
    assert "timm/mobilenetv2_100.ra_in1k" in line and "hf download" in line and "--checkpoint FILE" in line


def test_results_file_is_timms_csv_by_default_and_json_for_a_json_name(tmp_path):
    results = {"model": MODEL, "top1": 12.5, "top1_err": 87.5, "count": 8}
    write_results(str(tmp_path / "r.csv"), results)
    with open(tmp_path / "r.csv", newline="") as f:
        assert list(csv.DictReader(f)) == [{k: str(v) for k, v in results.items()}]
    write_results(str(tmp_path / "r.json"), results)
    assert json.loads((tmp_path / "r.json").read_text()) == results
