"""`python -m mv2jax.predict`: the shipped ImageNet class names are timm's, and the top-5 printed for an artifact
and for a checkpoint are the artifact's / the model's five largest logits, named."""

from __future__ import annotations

import numpy as np
import pytest
from timm.data import ImageNetInfo

from mv2jax.convert import mv2jax_to_timm
from mv2jax.convert.verify import photo_path
from mv2jax.export import load_artifact, load_images
from mv2jax.predict import imagenet_class_names, main


def test_shipped_class_names_equal_timms_imagenet_1k_names():
    info = ImageNetInfo()
    assert list(imagenet_class_names()) == [info.index_to_description(i) for i in range(info.num_classes())]


def _top5(capsys, argv) -> tuple[int, list[str]]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().out.splitlines()


def test_predict_prints_the_artifacts_top5_classes_by_name(capsys, tmp_path, variants):
    v = variants("mobilenetv2_035")
    # fixed batch: 3 images run as 2 padded batches
    v.export(tmp_path / "m.onnx", "onnx", batch_size=2, class_names=imagenet_class_names())
    photo = photo_path(None)
    code, lines = _top5(capsys, [photo, photo, photo, "--artifact", tmp_path / "m.onnx"])
    run, sidecar = load_artifact(tmp_path / "m.onnx")
    logits = run(np.repeat(load_images([photo], sidecar), 2, axis=0))[0]
    names = imagenet_class_names()
    expected = [f"{names[i]} ({i})" for i in np.argsort(-logits)[:5]]
    assert code == 0 and len(lines) == 3 * 6 and lines[0] == str(photo)
    assert [line.split("%  ", 1)[1] for line in lines[1:6]] == expected
    assert lines[6:12] == lines[:6]


def test_predict_from_a_checkpoint_prints_top5(capsys, tmp_path, variants):
    from safetensors.numpy import save_file

    v = variants("mobilenetv2_035")
    save_file(mv2jax_to_timm(v.model), str(tmp_path / "m.safetensors"))
    photo = photo_path(None)
    argv = [photo, "--model", v.name, "--checkpoint", tmp_path / "m.safetensors", "--img-size", 64]
    code, lines = _top5(capsys, argv)
    assert code == 0 and len(lines) == 6 and lines[1].startswith("  1. ")


@pytest.mark.parametrize(
    "argv, message",
    [(["no_such.jpg", "--artifact", "m.onnx"], "no_such.jpg does not exist"), (["{photo}"], "exactly one of")],
)
def test_predict_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    code = main([a.replace("{photo}", str(photo_path(None))) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mv2jax.predict: error:") and message in err and err.count("\n") == 1
