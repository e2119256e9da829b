"""Shared fixtures for the export tests: small variants with timm's weights (BatchNorm randomised, so folding it
matters), their timm float64 / float32 logits on random images and a photograph, and an exporter into tmp dirs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mv2jax.convert.verify import photo_path
from mv2jax.export import data_config, export, load_images
from tests.timm_reference import mv2jax_from_timm, random_nhwc, run_timm, timm_model

VARIANTS = ["mobilenetv2_035", "mobilenetv2_110d"]
IMG_SIZE = 64


class Variant:
    """A timm model, the mv2jax model holding its weights, and timm's logits on `x` (2 random images + a photo)."""

    def __init__(self, name: str):
        self.name = name
        self.tmodel = timm_model(name, seed=3)
        self.model = mv2jax_from_timm(self.tmodel, name)
        self.config = data_config(self.model, IMG_SIZE)
        photo = load_images([photo_path(None)], self.config)
        self.x = np.concatenate([random_nhwc(2, IMG_SIZE, seed=1), photo])
        self.ref64 = run_timm(self.tmodel, self.x, dtype=torch.float64)
        self.ref32 = run_timm(self.tmodel, self.x, dtype=torch.float32)

    def export(self, path: Path, fmt: str, **kwargs) -> dict:
        return export(self.model, path, fmt, self.config, name=self.name, **kwargs)


@pytest.fixture(scope="session")
def variants():
    cache: dict[str, Variant] = {}

    def get(name: str) -> Variant:
        if name not in cache:
            cache[name] = Variant(name)
        return cache[name]

    return get
