"""Opening image files: real photographs decode; a non-image or truncated file is a one-line error naming it."""

from __future__ import annotations

import os

import numpy as np
import pytest
import sklearn
from PIL import Image

from mv2jax.data import create_transform, load_image

PHOTO = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images", "china.jpg")


def test_photograph_loads_as_rgb_and_goes_through_the_eval_transform():
    img = load_image(PHOTO)
    assert img.mode == "RGB" and img.size == (640, 427)
    out = create_transform((3, 64, 64), crop_pct=0.875, interpolation="bicubic")(img)
    assert out.shape == (64, 64, 3) and out.dtype == np.float32


@pytest.mark.parametrize("content", [b"%PDF-1.4 definitely not an image", b""])
def test_non_image_file_is_a_one_line_error_naming_the_file(tmp_path, content):
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not an image file or corrupt") as e:
        load_image(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_truncated_jpeg_is_an_error(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.open(PHOTO).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(ValueError, match="cut.jpg"):
        load_image(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")
