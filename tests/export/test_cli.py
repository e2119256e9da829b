"""`python -m mv2jax.export`: model sources (a timm file, an mv2jax checkpoint directory with --use-ema), the
sidecar, --verify (passes for the artifact, fails for other weights), bad input in one line with exit 2, and
atomic writes (an interrupted write leaves nothing, an existing artifact survives a failed overwrite)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flax import nnx
from safetensors.numpy import save_file

import mv2jax
from mv2jax.convert import mv2jax_to_timm, write_orbax_state
from mv2jax.convert.verify import photo_path
from mv2jax.data import resolve_data_config
from mv2jax.export import artifact, load_artifact
from mv2jax.export.__main__ import main
from mv2jax.export.verify import verify_artifact
from tests.export.conftest import IMG_SIZE
from tests.timm_reference import rel_err

TOLERANCE_FACTOR = 2.0


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory, variants) -> Path:
    path = tmp_path_factory.mktemp("weights") / "m.safetensors"
    save_file(mv2jax_to_timm(variants("mobilenetv2_035").model), str(path))
    return path


def _run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_export_from_a_timm_file_writes_artifact_and_sidecar_and_verifies(capsys, tmp_path, timm_file, variants):
    out = tmp_path / "m.onnx"
    code, stdout, _ = _run(
        capsys, "--model", "mobilenetv2_035", "--checkpoint", timm_file, "--format", "onnx", "--output", out,
        "--img-size", IMG_SIZE, "--verify",
    )  # fmt: skip
    assert code == 0 and "verify: PASS" in stdout and "china.jpg" in stdout, stdout
    sidecar = json.loads(Path(f"{out}.json").read_text())
    cfg = resolve_data_config(variants("mobilenetv2_035").model, img_size=IMG_SIZE)
    assert sidecar == {
        "schema": 2,
        "format": "onnx",
        "model": "mobilenetv2_035",  # a file's weights are not timm's published ones: no tag, the file named
        "source": str(timm_file.absolute()),
        "mv2jax_version": mv2jax.__version__,
        "input_size": [3, IMG_SIZE, IMG_SIZE],
        "layout": "nchw",
        "batch_size": None,
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
        "crop_pct": cfg["crop_pct"],
        "crop_mode": cfg["crop_mode"],
        "interpolation": cfg["interpolation"],
        "num_classes": 1000,
        "class_names": None,
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]


def test_verify_fails_for_an_artifact_of_other_weights(tmp_path, variants):
    variants("mobilenetv2_035").export(tmp_path / "m.onnx", "onnx")
    other = mv2jax.create_model("mobilenetv2_035", seed=7).eval()  # same variant, other weights
    assert not verify_artifact(other, tmp_path / "m.onnx", photo_path(None))


def test_export_from_a_checkpoint_directory_takes_the_ema_weights(capsys, tmp_path, variants):
    """A train.py-style orbax directory (state with `model` and `ema`, meta naming the model)."""
    v = variants("mobilenetv2_035")
    other = mv2jax.create_model("mobilenetv2_035", seed=7).eval()
    state = lambda m: nnx.to_pure_dict(nnx.state(m, nnx.Any(nnx.Param, nnx.BatchStat)))  # noqa: E731
    write_orbax_state(tmp_path / "ckpt", {"model": state(other), "ema": state(v.model)}, {"model_name": v.name})
    for flag, is_ema in (("--use-ema", True), ("--ema", True), (None, False)):
        out = tmp_path / f"{flag}.onnx"
        argv = ["--checkpoint", tmp_path / "ckpt", "--format", "onnx", "--output", out, "--img-size", IMG_SIZE]
        assert _run(capsys, *argv, *([flag] if flag else []))[0] == 0
        ours, timm_own = rel_err(load_artifact(out)[0](v.x), v.ref64), rel_err(v.ref32, v.ref64)
        assert (ours <= TOLERANCE_FACTOR * timm_own) == is_ema, (flag, ours, timm_own)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--format", "pt"], "unknown format 'pt'"),
        (["--format", "onnx"], "exactly one of --pretrained"),
        (["--format", "onnx", "--checkpoint", "/no/such/ckpt"], "/no/such/ckpt does not exist"),
        (["--format", "onnx", "--checkpoint", "{weights}"], "pass --model"),
        (["--format", "onnx", "--model", "mobilenetv2_035", "--pretrained"], "has no pretrained weights"),
        (
            ["--format", "onnx", "--model", "mobilenetv2_035", "--checkpoint", "{weights}", "--batch-size", "0"],
            "--batch-size",
        ),  # fmt: skip
        (
            ["--format", "onnx", "--model", "mobilenetv2_035", "--checkpoint", "{weights}", "--img-size", "8"],
            "--img-size",
        ),  # fmt: skip
        (
            ["--format", "stablehlo", "--model", "mobilenetv2_035", "--checkpoint", "{weights}", "--layout", "nchw"],
            "nhwc",
        ),  # fmt: skip
        (["--format", "onnx", "--layout", "nhcw"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, timm_file, argv, message):
    argv = [a.replace("{weights}", str(timm_file)) for a in argv]
    code, stdout, stderr = _run(capsys, *argv, "--output", tmp_path / "m.out")
    assert code == 2
    assert stderr.startswith("mv2jax.export: error: ") and stderr.count("\n") == 1 and message in stderr, stderr
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused_without_overwrite(capsys, tmp_path, timm_file):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep")
    argv = ["--model", "mobilenetv2_035", "--checkpoint", timm_file, "--format", "onnx", "--output", out]
    code, _, stderr = _run(capsys, *argv)
    assert code == 2 and "--overwrite" in stderr and out.read_bytes() == b"keep"


def test_verify_without_timm_says_so_in_one_line(capsys, tmp_path, timm_file, monkeypatch):
    real = artifact.importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "timm" else real(name, *a))
    argv = ["--model", "mobilenetv2_035", "--checkpoint", timm_file, "--format", "onnx", "--output", tmp_path / "m"]
    code, _, stderr = _run(capsys, *argv, "--verify")
    assert code == 2 and "needs timm and torch" in stderr and stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_tflite_without_litert_converter_says_how_to_install_it(capsys, tmp_path, timm_file, monkeypatch):
    real = artifact.importlib.util.find_spec
    monkeypatch.setattr(
        "importlib.util.find_spec", lambda name, *a: None if name == "litert_converter" else real(name, *a)
    )
    argv = ["--model", "mobilenetv2_035", "--checkpoint", timm_file, "--format", "tflite", "--output", tmp_path / "m"]
    code, _, stderr = _run(capsys, *argv)
    assert code == 2 and "needs litert_converter: pip install 'mv2jax[litert]'" in stderr and stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


class _Interrupted(BaseException):
    pass


@pytest.mark.parametrize("overwrite", [False, True])
def test_interrupted_write_leaves_no_partial_artifact(tmp_path, variants, monkeypatch, overwrite):
    """The writer dies half-way through the artifact: no artifact, sidecar or temporary file is left, and an
    artifact being overwritten is still the old one."""
    out = tmp_path / "m.onnx"
    if overwrite:
        out.write_bytes(b"old artifact")
    real_write = Path.write_bytes

    def write_half_then_die(self, data):
        real_write(self, data[: len(data) // 2])
        raise _Interrupted

    monkeypatch.setattr(Path, "write_bytes", write_half_then_die)
    with pytest.raises(_Interrupted):
        variants("mobilenetv2_035").export(out, "onnx", overwrite=overwrite)
    assert [p.name for p in tmp_path.iterdir()] == (["m.onnx"] if overwrite else [])
    assert not overwrite or out.read_bytes() == b"old artifact"
