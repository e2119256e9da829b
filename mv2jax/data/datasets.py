"""Random-access image classification sources with timm's naming: ImageFolder trees, TFDS ArrayRecord, `digits`.

Every source is a sequence: `len(source)`, `source[i] -> (raw, label)` with `raw` an encoded image (`bytes`),
a `PIL.Image` or a uint8 `[H, W, C]` numpy array, and `label` a Python int in `[0, source.num_classes)`.
`source.describe(i)` names example `i` (a file path or a TFDS record id) for error messages, and
`source.class_names` names each class index (an ImageFolder's folder names, TFDS's label names, digits '0'..'9').
Pixels are decoded
lazily by `decode_image`, in the loader, so an unreadable file surfaces where it is used, not when the
dataset is listed. Sources are plain picklable objects: grain's worker processes receive a copy.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image

# timm.data.readers.img_extensions.IMG_EXTENSIONS: what timm's ImageFolder reader picks up.
IMG_EXTENSIONS = (".png", ".jpg", ".jpeg")
# timm.data.dataset_factory split synonyms, used to find a split sub-folder or a TFDS split.
TRAIN_SPLITS = ("train", "training")
EVAL_SPLITS = ("val", "valid", "validation", "eval", "evaluation")
DATASET_NAMES_HELP = (
    "'' or 'folder' (an ImageFolder tree, with --data-dir), 'tfds/NAME' (e.g. tfds/imagenet2012), 'digits'"
)


class ImageSource(Protocol):
    """What the loader needs from a dataset."""

    num_classes: int
    class_names: tuple[str, ...]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Any, int]: ...

    def describe(self, index: int) -> str: ...


def decode_image(raw: bytes | Image.Image | np.ndarray, mode: str = "RGB") -> Image.Image:
    """Decode `raw` into a fully loaded PIL image in `mode`; raises OSError/ValueError/SyntaxError if corrupt.

    `raw` is encoded bytes (JPEG, PNG, ...), a PIL image, or a uint8 `[H, W]` / `[H, W, C]` array (HWC).
    """
    if isinstance(raw, np.ndarray):
        img = Image.fromarray(raw[..., 0] if raw.ndim == 3 and raw.shape[-1] == 1 else raw)
    elif isinstance(raw, Image.Image):
        img = raw
    else:
        img = Image.open(io.BytesIO(raw))
    img = img.convert(mode)  # convert() decodes every pixel, so truncated files fail here
    img.load()
    return img


def load_image(path: str | os.PathLike, mode: str = "RGB") -> Image.Image:
    """Open an image file fully decoded in `mode`; a missing, non-image or corrupt file is one clear error."""
    try:
        with open(path, "rb") as f:
            return decode_image(f.read(), mode)
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} does not exist") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {path}: not an image file or corrupt ({type(e).__name__}: {e})") from e


def natural_key(text: str) -> list[int | str]:
    """timm.utils.misc.natural_key: 'c2' sorts before 'c10'."""
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", text.lower())]


def search_split(root: str, split: str) -> str:
    """timm's `_search_split`: `root/<split>` if it exists, else a synonym folder, else `root` itself."""
    split_name = split.split("[")[0]
    direct = os.path.join(root, split_name)
    if os.path.exists(direct):
        return direct
    synonyms = TRAIN_SPLITS if split_name in TRAIN_SPLITS else EVAL_SPLITS if split_name in EVAL_SPLITS else ()
    for name in synonyms:
        candidate = os.path.join(root, name)
        if os.path.exists(candidate):
            return candidate
    return root


def find_images_and_targets(
    folder: str, class_names: Sequence[str] | None = None, classes_of: str = "the given classes"
) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """timm's `find_images_and_targets`: walk `folder` recursively; the leaf folder name is the class.

    Classes are numbered in natural-sort order of their names, or by their index in `class_names` when given (as
    timm's `class_to_idx`), so that a split missing a class keeps every other label; a folder not in
    `class_names` is a ValueError naming it (`classes_of` says whose classes they are). Samples are natural-sorted
    by path.
    """
    labels, filenames = [], []
    for root, _, files in os.walk(folder, topdown=False, followlinks=True):
        rel_path = os.path.relpath(root, folder) if root != folder else ""
        label = os.path.basename(rel_path)
        for f in files:
            if os.path.splitext(f)[1].lower() in IMG_EXTENSIONS:
                filenames.append(os.path.join(root, f))
                labels.append(label)
    if class_names is None:
        class_to_idx = {c: i for i, c in enumerate(sorted(set(labels), key=natural_key))}
    else:
        class_to_idx = {c: i for i, c in enumerate(class_names)}
        unknown = sorted(set(labels) - set(class_to_idx), key=natural_key)
        if unknown:
            raise ValueError(
                f"folder {unknown[0]!r} in {folder} is not one of {classes_of} ({_preview(class_names)}): "
                "rename or remove it"
            )
    samples = sorted(
        ((f, class_to_idx[c]) for f, c in zip(filenames, labels, strict=True)), key=lambda s: natural_key(s[0])
    )
    return samples, class_to_idx


def _preview(names: Sequence[str], limit: int = 10) -> str:
    """The first `limit` names, comma-separated (a 1000-class list stays one short line)."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... {len(names)} in all" if len(names) > limit else "")


class ImageFolder:
    """A folder of class sub-folders (`root/<class>/**/*.jpg`) with timm's ImageDataset indexing.

    `source[i]` returns the file's encoded bytes and its class index; decoding happens in the loader. Given
    `class_names` (another split's, or a model's), folders are matched to them by name: the source has exactly
    those classes, whichever of them have folders here.
    """

    def __init__(self, root: str, class_names: Sequence[str] | None = None, classes_of: str = "the given classes"):
        if not os.path.isdir(root):
            raise FileNotFoundError(
                f"dataset folder not found: {root!r} (pass --data-dir DIR with DIR/train and "
                "DIR/validation (or DIR/val) holding one sub-folder per class)"
            )
        self.root = root
        self.samples, self.class_to_idx = find_images_and_targets(root, class_names, classes_of)
        if not self.samples:
            raise FileNotFoundError(
                f"no {'/'.join(IMG_EXTENSIONS)} images under {root!r} (expected "
                f"{root}/<class_name>/<image>; check --data-dir)"
            )
        self.class_names = tuple(self.class_to_idx)
        self.num_classes = len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[bytes, int]:
        path, label = self.samples[index]
        with open(path, "rb") as f:
            return f.read(), label

    def describe(self, index: int) -> str:
        return self.samples[index][0]


class TfdsSource:
    """A prepared TFDS dataset read with `tfds.data_source` (ArrayRecord, random access, no TensorFlow).

    The image feature is read undecoded (`SkipDecoding`: encoded JPEG/PNG bytes) so a corrupt record fails
    in the loader, like a corrupt file. Nothing is downloaded: the dataset must already be prepared in
    `data_dir` with `file_format=array_record`.
    """

    def __init__(self, name: str, split: str = "train", data_dir: str | None = None):
        import tensorflow_datasets as tfds  # heavy import, only for this source

        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError:
            raise ValueError(
                f"unknown TFDS dataset {name!r} (check the name after 'tfds/'; a custom dataset must "
                "be prepared under --data-dir)"
            ) from None
        if not builder.is_prepared():
            raise FileNotFoundError(
                f"TFDS dataset {name!r} is not prepared in {builder.data_dir!r} (build it there "
                f"first: `tfds build {name} --data_dir DIR --file_format array_record`, then "
                "pass --data-dir DIR)"
            )
        self.image_key, self.label_key = builder.info.supervised_keys or ("image", "label")
        self.split = _tfds_split(split, tuple(builder.info.splits.keys()))
        self.name = name
        self.source = builder.as_data_source(split=self.split, decoders={self.image_key: tfds.decode.SkipDecoding()})
        self.num_classes = builder.info.features[self.label_key].num_classes
        self.class_names = tuple(builder.info.features[self.label_key].names)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[bytes | np.ndarray, int]:
        record = self.source[index]
        return record[self.image_key], int(record[self.label_key])

    def describe(self, index: int) -> str:
        return f"tfds/{self.name}[{self.split}][{index}]"


def _tfds_split(split: str, available: Sequence[str]) -> str:
    """Map timm's split synonyms ('val', 'training', ...) onto the TFDS splits present; keep slices `[..]`."""
    name, bracket, rest = split.partition("[")
    if name in available:
        return split
    synonyms = TRAIN_SPLITS if name in TRAIN_SPLITS else EVAL_SPLITS + ("test",) if name in EVAL_SPLITS else ()
    for candidate in synonyms:
        if candidate in available:
            return candidate + bracket + rest
    raise ValueError(f"split {split!r} not in the TFDS dataset (it has {sorted(available)}); pass one of those")


class Digits:
    """scikit-learn's bundled handwritten digits (1797 real 8x8 images, 10 classes) as small RGB PIL images.

    A fixed stratified split: `holdout_fraction` of each class (chosen with `seed`) is the 'validation' split,
    the rest 'train'. Images are upscaled to `image_size` x `image_size` (bilinear), white on black.
    """

    def __init__(self, split: str = "train", image_size: int = 32, holdout_fraction: float = 0.2, seed: int = 0):
        from sklearn.datasets import load_digits  # bundled with scikit-learn: nothing is downloaded

        split_name = split.split("[")[0]
        if split_name not in TRAIN_SPLITS + EVAL_SPLITS + ("test",):
            raise ValueError(f"digits has splits 'train' and 'validation', not {split!r}")
        digits = load_digits()
        holdout = _stratified_holdout(digits.target, holdout_fraction, seed)
        keep = holdout if split_name not in TRAIN_SPLITS else ~holdout
        # 8x8 values are 0..16 ink levels; scale to 0..255.
        self.images = np.round(digits.images[keep] * (255.0 / 16.0)).astype(np.uint8)
        self.labels = digits.target[keep].astype(np.int64)
        self.image_size = image_size
        self.split = "train" if split_name in TRAIN_SPLITS else "validation"
        self.num_classes = 10
        self.class_names = tuple(str(d) for d in range(self.num_classes))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        img = Image.fromarray(self.images[index])  # uint8 [8, 8] -> mode "L"
        img = img.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR).convert("RGB")
        return img, int(self.labels[index])

    def describe(self, index: int) -> str:
        return f"digits[{self.split}][{index}]"


def _stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask choosing round(fraction * class size) examples of every class, reproducibly from `seed`."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        mask[rng.permutation(members)[: int(round(fraction * len(members)))]] = True
    return mask


def create_dataset(
    name: str,
    root: str | None = None,
    split: str = "train",
    *,
    search_split_dir: bool = True,
    class_names: Sequence[str] | None = None,
    classes_of: str = "the given classes",
    **kwargs: Any,
) -> ImageSource:
    """timm-style dataset factory: `''`/`'folder'`/`'image_folder'` -> ImageFolder (`root/<split>` resolved like
    timm's `_search_split`; its folders matched by name to `class_names` when given), `'tfds/NAME'` ->
    TfdsSource (root = TFDS data_dir), `'digits'` -> the embedded digits set (`kwargs`: image_size,
    holdout_fraction, seed). TFDS and digits number their classes themselves."""
    prefix, sep, rest = name.partition("/")
    if sep and prefix.lower() == "tfds":
        return TfdsSource(rest, split=split, data_dir=root)
    if sep:
        raise ValueError(f"unsupported dataset {name!r}: use {DATASET_NAMES_HELP}")
    if name == "digits":
        return Digits(split=split, **kwargs)
    if name in ("", "folder", "image_folder"):
        if not root:
            raise ValueError(
                "an ImageFolder dataset needs --data-dir DIR (or use --dataset digits for the embedded demo set)"
            )
        if search_split_dir and os.path.isdir(root):
            root = search_split(root, split)
        return ImageFolder(root, class_names, classes_of)
    raise ValueError(f"unknown dataset {name!r}: use {DATASET_NAMES_HELP}")
