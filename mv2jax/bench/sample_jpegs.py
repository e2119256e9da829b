"""ImageNet-like JPEGs without the network: random crops of scikit-learn's two bundled photographs (china.jpg,
flower.jpg, 427x640 RGB), resized to typical ImageNet train-image sizes and saved as JPEG into an ImageFolder."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

JPEG_QUALITY = 90
MIN_CROP_FRACTION = 0.5  # of each side of the source photograph


def _random_view(photo: Image.Image, sides: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A random crop of `photo` (at least MIN_CROP_FRACTION of each side), resized so height and width are
    drawn independently from `sides` (pixels, inclusive), randomly mirrored."""
    w, h = photo.size
    cw, ch = (int(rng.integers(int(MIN_CROP_FRACTION * s), s + 1)) for s in (w, h))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out_h, out_w = (int(rng.integers(sides[0], sides[1] + 1)) for _ in range(2))
    view = photo.crop((left, top, left + cw, top + ch)).resize((out_w, out_h), Image.Resampling.BICUBIC)
    return view.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else view


def write_sample_jpegs(
    root: str | os.PathLike, count: int, sides: tuple[int, int] = (350, 500), num_classes: int = 2, seed: int = 0
) -> dict[str, Any]:
    """Write `count` JPEGs (quality JPEG_QUALITY) to `root/class<k>/<i>.jpg`, classes round-robin.

    Deterministic in `seed`. Returns a description of what was written (see `describe_image_folder`).
    """
    from sklearn.datasets import load_sample_images  # bundled with scikit-learn: no download

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = Path(root, f"class{i % num_classes}")
        folder.mkdir(parents=True, exist_ok=True)
        view = _random_view(photos[int(rng.integers(len(photos)))], sides, rng)
        view.save(folder / f"{i:05d}.jpg", format="JPEG", quality=JPEG_QUALITY)
    return describe_image_folder(root) | {"source": "scikit-learn sample images (china.jpg, flower.jpg)"}


def describe_image_folder(root: str | os.PathLike, limit: int | None = None) -> dict[str, Any]:
    """Count, mean height/width (pixels, read from the headers) and mean file size (KiB) of the JPEG/PNG files
    under `root` (the first `limit` found, if given)."""
    found = (p for p in Path(root).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    paths = list(itertools.islice(found, limit))
    sizes = []
    for p in paths:
        with Image.open(p) as img:
            sizes.append(img.size)
    wh = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    return {
        "root": str(root),
        "files_described": len(paths),
        "mean_height": float(wh[:, 1].mean()) if len(paths) else 0.0,
        "mean_width": float(wh[:, 0].mean()) if len(paths) else 0.0,
        "mean_kib": float(np.mean([p.stat().st_size for p in paths]) / 1024) if paths else 0.0,
    }
