"""`python -m mv2jax.predict IMAGE...`: the top-5 classes of each image, from a model (name + --pretrained, or
--checkpoint) or from an exported artifact (--artifact FILE, preprocessed as its sidecar says). Images go through
timm's eval transform. Classes are named as the model records them: a train.py checkpoint's class names (its
ImageFolder's folder names), an artifact sidecar's, ImageNet-1k's for timm's published weights; else `class (i)`.

Exit codes: 0 every image classified; 1 an image could not be read (one line on stderr naming it; the other images'
results are still printed); 2 bad command line, missing image file or model (one line on stderr, nothing run); 130
interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mv2jax.cli import CliParser, add_model_source_args, check_img_size, cli_main, one_line
from mv2jax.data.imagenet import imagenet_class_names as imagenet_class_names

PROG = "mv2jax.predict"
TOPK = 5
UNNAMED_CLASS = "class"  # printed for a model whose class names are not recorded


EXIT_OK, EXIT_IMAGE_FAILED = 0, 1
EXIT_CODES = """exit codes:
  0    every image classified
  1    an image could not be read: one line on stderr names it; the other images' results are printed
  2    bad command line, missing image file or model: one line on stderr, nothing run
  130  interrupted (Ctrl-C)
"""


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        PROG,
        description="Top-5 classes of images, named as the model records them.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (anything Pillow reads)")
    add_model_source_args(p)
    p.add_argument("--artifact", metavar="FILE", help="an artifact written by python -m mv2jax.export")
    p.add_argument(
        "--img-size",
        type=int,
        metavar="N",
        help="model input size (default: the size a train.py checkpoint trained at, else the model's; not artifacts)",
    )
    return p


def predictor(args: argparse.Namespace) -> tuple[Callable[[np.ndarray], np.ndarray], dict, list[str]]:
    """(logits of an NHWC batch, preprocessing config, one name per class) for the chosen model source."""
    from mv2jax.export import class_names, data_config, load_artifact, load_model

    if args.artifact:
        if args.model or args.pretrained or args.checkpoint or args.img_size:
            raise ValueError("--artifact carries its own model and input size: drop --model/--pretrained/--checkpoint")
        run, sidecar = load_artifact(args.artifact)
        names = class_labels(sidecar["num_classes"], sidecar["class_names"])
        return fixed_batches(run, sidecar["batch_size"]), sidecar, names
    from mv2jax.models import fuse_for_inference

    loaded = load_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint, use_ema=args.use_ema)
    model, meta = loaded.model, loaded.meta
    fused = fuse_for_inference(model)
    config = data_config(model, args.img_size, trained=meta.data_config)
    return (lambda x: np.asarray(fused(x))), config, class_labels(model.num_classes, class_names(meta))


def class_labels(num_classes: int, names: Sequence[str] | None) -> list[str]:
    """The name printed for each class index: the model's, else `class` (the index follows it anyway)."""
    return list(names) if names else [UNNAMED_CLASS] * num_classes


def fixed_batches(run: Callable[[np.ndarray], np.ndarray], batch_size: int | None) -> Callable:
    """`run` for any number of images when the artifact takes exactly `batch_size` (the last batch zero-padded)."""
    if not batch_size:
        return run

    def run_any(x: np.ndarray) -> np.ndarray:
        pad = -len(x) % batch_size
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
        return np.concatenate([run(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])[: len(x) - pad]

    return run_any


def top_k(logits: np.ndarray, k: int) -> list[tuple[int, float]]:
    """(class, softmax probability) of the `k` largest logits of one image, best first."""
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    return [(int(i), float(p[i])) for i in np.argsort(-z, kind="stable")[:k]]


@cli_main(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_img_size(args.img_size)
    for image in args.images:
        if not Path(image).is_file():
            raise FileNotFoundError(f"image {image} does not exist")
    run, config, names = predictor(args)
    num_classes = len(names)
    if num_classes == 0:
        raise ValueError("the model has no classifier (num_classes 0): there are no classes to rank")
    images, batch = load_each(args.images, config)
    logits = run(batch) if images else []
    for image, row in zip(images, logits, strict=True):
        print(image)
        for rank, (cls, prob) in enumerate(top_k(row, min(TOPK, num_classes)), 1):
            print(f"  {rank}. {prob:7.2%}  {names[cls]} ({cls})")
    return EXIT_OK if len(images) == len(args.images) else EXIT_IMAGE_FAILED


def load_each(images: Sequence[str], config: dict) -> tuple[list[str], np.ndarray]:
    """(the images that could be read, their NHWC batch through the eval transform for `config`). Each one that
    could not is reported as one line on stderr naming it, and left out."""
    from mv2jax.export import load_images

    good, arrays = [], []
    for image in images:
        try:
            arrays.append(load_images([Path(image)], config)[0])
        except (OSError, ValueError) as e:
            print(f"{PROG}: error: {one_line(e)}", file=sys.stderr, flush=True)
            continue
        good.append(image)
    return good, np.stack(arrays) if arrays else np.zeros((0,))


if __name__ == "__main__":
    sys.exit(main())
