"""mv2jax RandomErasing (HWC numpy) against timm's RandomErasing (CHW torch)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from scipy import stats
from timm.data.random_erasing import RandomErasing as TimmRandomErasing

from mv2jax.data import create_transform
from mv2jax.data.random_erasing import RandomErasing

CONFIGS = [
    dict(probability=0.7),
    dict(probability=0.9, max_count=3),
    dict(probability=1.0, min_area=0.1, max_area=0.6, min_aspect=0.5, max_aspect=3.0, min_count=2, max_count=4),
]


@pytest.fixture(scope="module")
def normalized_photos(small_photos):
    """Normalised float32 HWC photos of a few shapes, including one so small that boxes often fail to fit."""
    out = [create_transform((3, 48, 64))(img) for img in small_photos.values()]
    return [*out, create_transform((3, 6, 5))(small_photos["hopper"])]


def _timm_erase(erasing: TimmRandomErasing, img_hwc: np.ndarray) -> np.ndarray:
    chw = torch.from_numpy(np.ascontiguousarray(img_hwc.transpose(2, 0, 1).copy()))
    return erasing(chw).numpy().transpose(1, 2, 0)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_const_erasing_equals_timm_draw_for_draw(config, normalized_photos, recording_rng, timm_replay):
    """Fed the boxes mv2jax drew, timm erases exactly the same pixels (and asks for the same draws)."""
    ours = RandomErasing(mode="const", **config)
    theirs = TimmRandomErasing(mode="const", device="cpu", **config)
    erased = 0
    for seed in range(25):
        for img in normalized_photos:
            rng = recording_rng(seed)
            got = ours(img.copy(), rng)
            replay = timm_replay(rng.log)
            expected = _timm_erase(theirs, img)
            replay.assert_consumed()
            np.testing.assert_array_equal(got, expected)
            erased += int((got != img).any())
    assert erased > 0


@pytest.mark.parametrize("mode", ["pixel", "rand"])
def test_random_fill_boxes_equal_timm_and_fill_statistics(mode, normalized_photos, recording_rng, timm_replay):
    """Same boxes as timm (values come from each library's own normal generator): identical pixels outside the
    boxes, and inside N(0, 1) values -- per pixel and channel ('pixel') or one per channel and box ('rand')."""
    ours = RandomErasing(probability=0.8, mode=mode, max_count=2)
    theirs = TimmRandomErasing(probability=0.8, mode=mode, max_count=2, device="cpu")
    fills, per_box_unique = [], []
    torch.manual_seed(0)
    for seed in range(40):
        img = normalized_photos[seed % 3]
        rng = recording_rng(seed)
        got = ours(img.copy(), rng)
        timm_replay([entry for entry in rng.log if entry[0] != "normal_block"])
        expected = _timm_erase(theirs, img)
        mask_ours, mask_timm = (got != img).any(-1), (expected != img).any(-1)
        np.testing.assert_array_equal(mask_ours, mask_timm)
        np.testing.assert_array_equal(got[~mask_ours], img[~mask_ours])
        for entry in rng.log:
            if entry[0] == "normal_block":
                block = entry[2]
                fills.append(block.ravel())
                per_box_unique.append(len(np.unique(block.reshape(-1, 3), axis=0)))
    values = np.concatenate(fills)
    n = values.size
    assert abs(values.mean()) < 5 / np.sqrt(n) and abs(values.std() - 1) < 5 / np.sqrt(2 * n)
    if mode == "rand":
        assert set(per_box_unique) == {1}
    else:
        assert np.mean(np.array(per_box_unique) > 1) > 0.9


def _erased_pixels(erase, n: int, shape=(48, 64, 3)) -> list[np.ndarray]:
    """The pixels of the box erased in each of `n` NaN images, as [pixels, channels] (the box is where the output
    is a number: no box position or RNG log is trusted, only what was written into the image)."""
    boxes = []
    for _ in range(n):
        out = erase(np.full(shape, np.nan, np.float32))
        written = ~np.isnan(out)
        assert (written.all(-1) == written.any(-1)).all()  # whole pixels, every channel
        if written.any():
            boxes.append(out[written.all(-1)])
    return boxes


@pytest.mark.parametrize("mode", ["pixel", "rand"])
@pytest.mark.parametrize("side", ["mv2jax", "timm"])
def test_random_fill_statistics_measured_on_the_erased_pixels(mode, side):
    """'pixel': every erased value is N(0, 1) on its own; 'rand': one N(0, 1) colour per box, different per
    channel. Measured on the pixels each library wrote (timm checked by the same rule, so the rule holds for the
    reference), to 5 standard errors of the sample mean and standard deviation; a zero fill fails it."""
    config = dict(probability=1.0, min_area=0.2, max_area=0.4, mode=mode)
    n = 300
    if side == "timm":
        timm_re = TimmRandomErasing(device="cpu", **config)
        random.seed(0)
        torch.manual_seed(0)
        boxes = _erased_pixels(lambda x: _timm_erase(timm_re, x), n)
    else:
        rng = np.random.default_rng(0)
        ours = RandomErasing(**config)
        boxes = _erased_pixels(lambda x: ours(x, rng), n)
    assert len(boxes) > 0.9 * n
    if mode == "pixel":
        values = np.concatenate([b.ravel() for b in boxes]).astype(np.float64)
        assert all(len(np.unique(b, axis=0)) > 0.9 * len(b) for b in boxes)  # a value per pixel
    else:
        assert all((b == b[0]).all() for b in boxes)  # one colour per box ...
        values = np.stack([b[0] for b in boxes]).astype(np.float64)
        assert np.mean([len(set(b[0].tolist())) == 3 for b in boxes]) > 0.99  # ... not one grey level
    m = values.size
    assert abs(values.mean()) < 5 / np.sqrt(m), values.mean()
    assert abs(values.std() - 1) < 5 / np.sqrt(2 * m), values.std()


def _boxes(erase, n, shape=(40, 56)):
    """(erased, top, left, h, w) of the single box erased in a ones image, n times."""
    out = np.zeros((n, 5))
    for k in range(n):
        mask = erase(np.ones((*shape, 3), np.float32)).any(-1)
        if mask.any():
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            out[k] = (1, rows[0], cols[0], len(rows), len(cols))
    return out


def _same_box_distribution(a, b, alpha=1e-4):
    n = len(a)
    rate_ok = abs(a[:, 0].mean() - b[:, 0].mean()) < 5 * np.sqrt(2 * 0.25 / n)
    a, b = a[a[:, 0] == 1], b[b[:, 0] == 1]
    return rate_ok and all(stats.ks_2samp(a[:, k], b[:, k]).pvalue > alpha for k in range(1, 5))


def test_erasing_boxes_follow_timm_distribution():
    """Erase rate and KS tests on box top/left/height/width between mv2jax and timm; the same test rejects a
    slightly wrong minimum area, so it can fail."""
    n = 5000
    theirs_re = TimmRandomErasing(probability=0.6, mode="pixel", device="cpu")
    random.seed(0)
    torch.manual_seed(0)
    theirs = _boxes(lambda x: _timm_erase(theirs_re, x) != 1, n)
    rng = np.random.default_rng(0)
    ours = _boxes(lambda x: RandomErasing(probability=0.6, mode="pixel")(x, rng) != 1, n)
    assert _same_box_distribution(ours, theirs)
    wrong = _boxes(lambda x: RandomErasing(probability=0.6, min_area=0.04, mode="pixel")(x, rng) != 1, n)
    assert not _same_box_distribution(wrong, theirs)


def test_multi_box_erased_area_follows_timm():
    n = 3000
    theirs_re = TimmRandomErasing(probability=1.0, max_count=3, device="cpu")
    random.seed(1)
    ones = np.ones((40, 56, 3), np.float32)
    theirs = [(_timm_erase(theirs_re, ones) == 0).mean() for _ in range(n)]
    rng = np.random.default_rng(1)
    ours_re = RandomErasing(probability=1.0, max_count=3)
    ours = [(ours_re(ones.copy(), rng) == 0).mean() for _ in range(n)]
    assert stats.ks_2samp(ours, theirs).pvalue > 1e-4


def test_erase_batch_skips_clean_split():
    batch = np.ones((6, 16, 16, 3), np.float32)
    RandomErasing(probability=1.0, num_splits=3).erase_batch(batch, np.random.default_rng(0))
    assert (batch[:2] == 1).all()
    assert all((batch[i] == 0).any() for i in range(2, 6))
