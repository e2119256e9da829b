"""`python -m mv2jax.predict IMAGE...`: the top-5 classes of each image, from a model (name + --pretrained, or
--checkpoint) or from an exported artifact (--artifact FILE, preprocessed as its sidecar says). Images go through
timm's eval transform; 1000-class models are labelled with ImageNet-1k's class names.

Exit codes: 0 done, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from mv2jax.cli import CliParser, add_model_source_args, cli_main

PROG = "mv2jax.predict"
TOPK = 5
IMAGENET_CLASSES_FILE = "imagenet_classes.txt"  # in mv2jax.data: one name per line, in class-index order


def imagenet_class_names() -> list[str]:
    """ImageNet-1k's 1000 class names (timm's `ImageNetInfo` descriptions), by class index."""
    return resources.files("mv2jax.data").joinpath(IMAGENET_CLASSES_FILE).read_text().splitlines()


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(PROG, description="Top-5 ImageNet classes of images.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (anything Pillow reads)")
    add_model_source_args(p)
    p.add_argument("--artifact", metavar="FILE", help="an artifact written by python -m mv2jax.export")
    p.add_argument("--img-size", type=int, metavar="N", help="model input size (default: the model's; not artifacts)")
    return p


def predictor(args: argparse.Namespace) -> tuple[Callable[[np.ndarray], np.ndarray], dict, int]:
    """(logits of an NHWC batch, preprocessing config, class count) for the chosen model source."""
    from mv2jax.export import data_config, load_artifact, load_model

    if args.artifact:
        if args.model or args.pretrained or args.checkpoint or args.img_size:
            raise ValueError("--artifact carries its own model and input size: drop --model/--pretrained/--checkpoint")
        run, sidecar = load_artifact(args.artifact)
        return fixed_batches(run, sidecar["batch_size"]), sidecar, sidecar["num_classes"]
    from mv2jax.models import fuse_for_inference

    model = load_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint, use_ema=args.use_ema)
    fused = fuse_for_inference(model)
    return (lambda x: np.asarray(fused(x))), data_config(model, args.img_size), model.num_classes


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
    from mv2jax.export import load_images

    for image in args.images:
        if not Path(image).is_file():
            raise FileNotFoundError(f"image {image} does not exist")
    run, config, num_classes = predictor(args)
    if num_classes == 0:
        raise ValueError("the model has no classifier (num_classes 0): there are no classes to rank")
    names = imagenet_class_names() if num_classes == 1000 else None
    logits = run(load_images([Path(i) for i in args.images], config))
    for image, row in zip(args.images, logits, strict=True):
        print(image)
        for rank, (cls, prob) in enumerate(top_k(row, min(TOPK, num_classes)), 1):
            print(f"  {rank}. {prob:7.2%}  {names[cls] if names else 'class'} ({cls})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
