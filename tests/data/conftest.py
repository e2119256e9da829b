"""Shared fixtures for the data tests: real photographs shipped inside installed packages, and draw-for-draw
replay of mv2jax's random draws into timm / torchvision.

Replay: mv2jax's transforms draw from a `numpy.random.Generator`; timm draws from Python's `random`,
`np.random.choice` and torch. A `RecordingRng` logs every scalar draw mv2jax makes as (kind, args, value); the
`timm_replay` fixture patches timm's and torchvision's random call sites to return those values *and* to check
that timm asks for the same kind of draw with the same arguments, in the same order. Both libraries then make
identical decisions, so outputs can be compared pixel for pixel, and the draw structure itself is checked.
"""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import numpy as np
import pytest
import timm.data.auto_augment
import timm.data.random_erasing
import timm.data.transforms
import torch
import torchvision.transforms
from PIL import Image


def _package_dir(name: str) -> Path:
    """Where an installed package lives, without importing it (sklearn and matplotlib are slow to import)."""
    return Path(importlib.util.find_spec(name).submodule_search_locations[0])


_PHOTO_FILES = {
    "china": _package_dir("sklearn") / "datasets" / "images" / "china.jpg",  # 640x427 landscape
    "flower": _package_dir("sklearn") / "datasets" / "images" / "flower.jpg",  # 640x427 landscape
    "hopper": _package_dir("matplotlib") / "mpl-data" / "sample_data" / "grace_hopper.jpg",  # 512x600 portrait
}


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    """Full-size RGB photographs (landscape and portrait)."""
    return {name: Image.open(path).convert("RGB") for name, path in _PHOTO_FILES.items()}


@pytest.fixture(scope="session")
def small_photos(photos) -> dict[str, Image.Image]:
    """The photographs shrunk (aspect kept) to at most 96 px, for fast op-level tests."""
    out = {}
    for name, img in photos.items():
        img = img.copy()
        img.thumbnail((96, 96), Image.Resampling.BICUBIC)
        out[name] = img
    return out


class RecordingRng:
    """numpy Generator stand-in that logs each draw as (kind, args, value), named as timm's draw would be."""

    def __init__(self, seed: int):
        self.gen = np.random.default_rng(seed)
        self.log: list[tuple[str, tuple, object]] = []

    def _record(self, kind, args, value):
        self.log.append((kind, args, value))
        return value

    def random(self):
        return self._record("random", (), float(self.gen.random()))

    def uniform(self, low, high):
        return self._record("uniform", (low, high), float(self.gen.uniform(low, high)))

    def normal(self, loc, scale):
        return self._record("gauss", (loc, scale), float(self.gen.normal(loc, scale)))

    def integers(self, low, high=None):
        low, high = (0, low) if high is None else (low, high)
        return self._record("randint", (low, high - 1), int(self.gen.integers(low, high)))

    def choice(self, a, size=None, replace=True, p=None):
        value = self.gen.choice(a, size, replace=replace, p=p)
        key = (a, size, replace, None if p is None else tuple(np.asarray(p, dtype=float)))
        return self._record("np_choice", key, [int(v) for v in np.atleast_1d(value)])

    def permutation(self, n):
        return self._record("randperm", (n,), [int(v) for v in self.gen.permutation(n)])

    def standard_normal(self, shape, dtype=np.float64):
        return self._record("normal_block", (tuple(shape),), self.gen.standard_normal(shape, dtype=dtype))


class Replay:
    """Serves a RecordingRng's log to timm's call sites, checking kind and arguments of every draw."""

    def __init__(self, log):
        self.log = list(log)

    def next(self, kind, args=()):
        assert self.log, f"timm asked for an extra draw: {kind}{args}"
        got_kind, got_args, value = self.log.pop(0)
        assert got_kind == kind, f"draw order differs: mv2jax drew {got_kind}{got_args}, timm draws {kind}{args}"
        if kind == "np_choice":
            assert got_args[:3] == args[:3] and (got_args[3] is None) == (args[3] is None), (got_args, args)
            if args[3] is not None:
                np.testing.assert_allclose(got_args[3], args[3], rtol=1e-12)
        else:
            np.testing.assert_allclose(np.asarray(got_args, float), np.asarray(args, float), rtol=1e-12)
        return value

    # Python `random` module API (timm)
    def random(self):
        return self.next("random")

    def uniform(self, a, b):
        if self.log and self.log[0][0] == "random":  # Python's uniform(a, b) is a + (b - a) * random()
            return a + (b - a) * self.next("random")
        return self.next("uniform", (a, b))

    def randint(self, a, b):
        return self.next("randint", (a, b))

    def gauss(self, mu, sigma):
        return self.next("gauss", (mu, sigma))

    def choice(self, seq):
        return seq[self.next("randint", (0, len(seq) - 1))]

    # np.random.choice (timm RandAugment op selection)
    def np_choice(self, a, size=None, replace=True, p=None):
        key = (len(a), size, replace, None if p is None else tuple(np.asarray(p, dtype=float)))
        return [a[i] for i in self.next("np_choice", key)]

    # torch.rand(1) (torchvision RandomHorizontalFlip / RandomVerticalFlip)
    def torch_rand(self, *size, **_):
        return torch.tensor([self.next("random")])

    # torchvision ColorJitter.get_params
    def color_jitter_params(self, brightness, contrast, saturation, hue):
        order = torch.tensor(self.next("randperm", (4,)))
        ranges = (brightness, contrast, saturation, hue)
        factors = [None if r is None else self.next("uniform", tuple(r)) for r in ranges]
        return (order, *factors)

    def assert_consumed(self):
        assert not self.log, f"mv2jax made draws timm did not: {self.log[:3]}"


@pytest.fixture
def recording_rng():
    """Factory: `recording_rng(seed)` -> RecordingRng."""
    return RecordingRng


@pytest.fixture
def timm_replay(monkeypatch):
    """`timm_replay(log)` patches timm's / torchvision's random call sites to replay `log`; returns the Replay."""

    def patch(log) -> Replay:
        replay = Replay(log)
        for module in (timm.data.auto_augment, timm.data.transforms, timm.data.random_erasing):
            monkeypatch.setattr(module, "random", replay)
        monkeypatch.setattr(
            timm.data.auto_augment, "np", types.SimpleNamespace(random=types.SimpleNamespace(choice=replay.np_choice))
        )
        monkeypatch.setattr(torch, "rand", replay.torch_rand)
        monkeypatch.setattr(torchvision.transforms.ColorJitter, "get_params", staticmethod(replay.color_jitter_params))
        return replay

    return patch
