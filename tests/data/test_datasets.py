"""Dataset sources: ImageFolder indexing equals timm's ImageDataset (and torchvision's ImageFolder), split
folders resolve like timm's `_search_split`, a real ArrayRecord TFDS dataset built here (no TensorFlow) reads
back through `tfds.data_source`, the embedded digits split is fixed and stratified, and bad names or paths
fail with one line that names the fix."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
import timm.data
import torchvision.datasets
from PIL import Image
from timm.data.dataset_factory import _search_split as timm_search_split

from mv2jax.data.datasets import Digits, ImageFolder, create_dataset, decode_image, search_split
from mv2jax.data.loader import create_loader


def _write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (6, 5, 3), np.uint8)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.fromarray(pixels).save(path, format=fmt)


def _make_tree(root: Path, files: list[str]) -> Path:
    for i, rel in enumerate(files):
        if rel.endswith(".txt"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text("not an image")
        else:
            _write_image(root / rel, i)
    return root


def test_imagefolder_samples_and_classes_equal_timm_image_dataset(tmp_path):
    # natural sort ('c2' < 'c10'), upper-case extension, nested leaf folder, non-image file ignored
    root = _make_tree(
        tmp_path,
        [
            "c10/b.jpg",
            "c10/a10.jpg",
            "c10/a9.JPG",
            "c2/x.png",
            "C1/z.jpeg",
            "c3/deep/leaf.jpg",
            "c3/readme.txt",
            "c2/img2.jpg",
            "c2/img10.jpg",
        ],
    )
    ours = ImageFolder(str(root))
    theirs = timm.data.ImageDataset(str(root))
    assert ours.class_to_idx == theirs.reader.class_to_idx
    assert ours.samples == [(str(p), t) for p, t in theirs.reader.samples]
    assert ours.num_classes == len(theirs.reader.class_to_idx)
    for i in range(len(ours)):
        raw, label = ours[i]
        img, target = theirs[i]
        assert label == target and ours.describe(i) == ours.samples[i][0]
        np.testing.assert_array_equal(np.asarray(decode_image(raw)), np.asarray(img))


def test_imagefolder_class_indices_equal_torchvision_imagefolder(tmp_path):
    root = _make_tree(
        tmp_path, ["n02102040/a.jpg", "n01440764/b.png", "n01443537/c.jpg", "n01443537/d.jpeg", "n01440764/e.jpg"]
    )
    ours, tv = ImageFolder(str(root)), torchvision.datasets.ImageFolder(str(root))
    assert ours.class_to_idx == tv.class_to_idx
    assert sorted(ours.samples) == sorted(tv.samples)


@pytest.mark.parametrize("layout", [("train", "validation"), ("train", "val"), ("training", "eval"), ()])
@pytest.mark.parametrize("split", ["train", "validation", "val", "test", "train[:10%]"])
def test_split_folder_resolves_like_timm(tmp_path, layout, split):
    for name in layout:
        (tmp_path / name).mkdir()
    assert search_split(str(tmp_path), split) == timm_search_split(str(tmp_path), split)


def test_create_dataset_picks_the_split_folder(tmp_path):
    _make_tree(tmp_path, ["train/a/1.jpg", "train/b/2.jpg", "train/b/3.jpg", "val/a/4.jpg", "val/b/5.jpg"])
    assert len(create_dataset("", str(tmp_path), split="train")) == 3
    assert create_dataset("folder", str(tmp_path), split="validation").root == str(tmp_path / "val")


@pytest.mark.parametrize(
    ("name", "root", "exc", "fix"),
    [
        ("", "/no/such/dir", FileNotFoundError, "--data-dir"),
        ("", None, ValueError, "--data-dir"),
        ("imagenet", "/tmp", ValueError, "digits"),
        ("hfds/foo", None, ValueError, "tfds/NAME"),
        ("tfds/definitely_not_a_dataset", None, ValueError, "tfds/"),
    ],
)
def test_bad_dataset_name_or_dir_fails_with_one_line_naming_the_fix(name, root, exc, fix):
    with pytest.raises(exc) as err:
        create_dataset(name, root)
    assert fix in str(err.value) and "\n" not in str(err.value)


def test_empty_folder_and_unprepared_tfds_fail_with_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .* images under") as err:
        create_dataset("", str(tmp_path))
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="tfds build imagenet2012 .*--file_format array_record") as err:
        create_dataset("tfds/imagenet2012", str(tmp_path), split="train")
    assert "\n" not in str(err.value)


def test_digits_split_is_fixed_disjoint_and_stratified():
    train, val = Digits("train"), create_dataset("digits", split="validation")
    assert len(train) + len(val) == 1797 and len(val) == 359
    counts_train, counts_val = np.bincount(train.labels), np.bincount(val.labels)
    np.testing.assert_allclose(counts_val / (counts_train + counts_val), 0.2, atol=0.01)
    assert len({a.tobytes() for a in train.images} & {a.tobytes() for a in val.images}) <= 2  # a few duplicates
    np.testing.assert_array_equal(Digits("val").images, val.images)  # timm's split synonyms; deterministic
    img, label = val[0]
    assert img.mode == "RGB" and img.size == (32, 32) and label == val.labels[0] and val.num_classes == 10
    assert val.class_names == tuple("0123456789")
    assert Digits("train", image_size=16)[0][0].size == (16, 16)


class TinyTfdsImages(tfds.core.GeneratorBasedBuilder):
    """A real TFDS dataset, PNG images given as PIL images so building needs no TensorFlow."""

    VERSION = tfds.core.Version("1.0.0")
    # tfds looks for a checksums file beside the builder's code via `importlib_resources` (not installed):
    # a builder defined in a test module has no such file anyway.
    code_path = None

    def _info(self):
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                "label": tfds.features.ClassLabel(names=["ant", "bee", "cow"]),
            }
        )
        return self.dataset_info_from_configs(features=features, supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 7), "validation": self._generate_examples(100, 5)}

    def _generate_examples(self, start, n):
        for i in range(start, start + n):
            yield i, {"image": Image.fromarray(_tiny_pixels(i)), "label": i % 3}


def _tiny_pixels(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 255, (5 + i % 3, 7, 3), np.uint8)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    TinyTfdsImages(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def test_tfds_array_record_source_reads_encoded_images_and_labels(tfds_dir):
    ds = create_dataset("tfds/tiny_tfds_images", root=tfds_dir, split="val")  # timm synonym -> 'validation'
    assert len(ds) == 5 and ds.num_classes == 3 and ds.split == "validation"
    assert ds.class_names == ("ant", "bee", "cow")  # TFDS's label names, recorded by train.py
    expected = {(_tiny_pixels(i).tobytes(), i % 3) for i in range(100, 105)}  # record order is TFDS's
    got = set()
    for i in range(len(ds)):
        raw, label = ds[i]
        assert isinstance(raw, bytes) and Image.open(io.BytesIO(raw)).format == "PNG"  # decoded by us, lazily
        got.add((np.asarray(decode_image(raw)).tobytes(), label))
    assert got == expected
    assert "tiny_tfds_images[validation][" in ds.describe(0)


def test_tfds_source_feeds_the_loader(tfds_dir):
    ds = create_dataset("tfds/tiny_tfds_images", root=tfds_dir, split="train")
    batches = list(
        create_loader(ds, lambda img: np.asarray(img.resize((3, 3)), np.float32), batch_size=4, is_training=False)
    )
    assert len(batches) == 2 and sum(int(b["mask"].sum()) for b in batches) == 7
