"""ImageNet-1k's class names, the labels of timm's published `*_in1k` weights."""

from __future__ import annotations

import functools
from importlib import resources

IMAGENET_CLASSES_FILE = "imagenet_classes.txt"  # in mv2jax.data: one name per line, in class-index order
IMAGENET_NUM_CLASSES = 1000


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """ImageNet-1k's 1000 class names (timm's `ImageNetInfo` descriptions), by class index."""
    return tuple(resources.files("mv2jax.data").joinpath(IMAGENET_CLASSES_FILE).read_text().splitlines())


def published_class_names(pretrained_tag: str | None, num_classes: int) -> tuple[str, ...] | None:
    """ImageNet-1k's names for timm's published 1000-class `*_in1k` weights (whose configs record none), else None."""
    if pretrained_tag and pretrained_tag.endswith("in1k") and num_classes == IMAGENET_NUM_CLASSES:
        return imagenet_class_names()
    return None
