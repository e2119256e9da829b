"""mv2jax.data transforms and config against the installed timm / torchvision, on real photographs."""

from __future__ import annotations

import itertools
import math
import pickle
import random
import types

import numpy as np
import pytest
import timm
import timm.data
import torch
import torchvision.transforms
import torchvision.transforms.functional as TF
from PIL import Image
from scipy import stats
from timm.data.transforms import RandomResizedCropAndInterpolation

from mv2jax.data import color, create_transform, geometry, resolve_data_config

# --- config -----------------------------------------------------------------------------------------------------

MODEL_NAMES = ["mobilenetv2_100.ra_in1k", "mobilenetv2_050.lamb_in1k", "mobilenetv2_120d.ra_in1k"]
OVERRIDES = [
    {},
    {"img_size": 192, "crop_pct": 0.95, "interpolation": "bilinear"},
    {"input_size": (3, 160, 200), "mean": (0.5,), "std": (0.25,), "crop_mode": "squash"},
    {"in_chans": 1, "mean": (0.5,)},
]


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("overrides", OVERRIDES)
def test_resolve_data_config_equals_timm(name, overrides):
    pretrained_cfg = timm.models.get_pretrained_cfg(name).to_dict()
    model = types.SimpleNamespace(pretrained_cfg=pretrained_cfg)
    expected = timm.data.resolve_data_config(dict(overrides), model=model)
    assert resolve_data_config(model, **overrides) == expected
    assert resolve_data_config(pretrained_cfg=pretrained_cfg, args=overrides) == expected


def test_resolve_data_config_defaults_and_test_size():
    cfg = {"input_size": (3, 224, 224), "test_input_size": (3, 288, 288), "test_crop_pct": 1.0, "crop_pct": 0.9}
    for use_test_size in (False, True):
        expected = timm.data.resolve_data_config({}, pretrained_cfg=cfg, use_test_size=use_test_size)
        assert resolve_data_config(pretrained_cfg=cfg, use_test_size=use_test_size) == expected
    assert resolve_data_config() == timm.data.resolve_data_config({"foo": None})


# --- eval transform ----------------------------------------------------------------------------------------------

EVAL_CASES = [
    dict(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bicubic"),
    dict(input_size=(3, 224, 224), crop_pct=1.0, interpolation="bilinear"),
    dict(input_size=160, crop_pct=0.95, interpolation="lanczos"),
    dict(input_size=(3, 256, 256), crop_pct=0.9, interpolation="nearest"),
    dict(input_size=(3, 192, 256), crop_pct=0.9, interpolation="bicubic"),  # non-square: ResizeKeepRatio
    dict(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bicubic", crop_mode="squash"),
    dict(input_size=(3, 200, 224), crop_pct=0.95, interpolation="bilinear", crop_mode="border"),
    dict(input_size=(3, 224, 224), crop_pct=0.875, interpolation="hamming", crop_border_pixels=7),
]


@pytest.fixture(scope="module")
def eval_images(photos):
    """Landscape, portrait, tiny (smaller than every crop) and very thin images, all from real photographs."""
    tiny = photos["flower"].resize((37, 23), Image.Resampling.BICUBIC)
    strip = photos["china"].crop((100, 200, 500, 230))  # 400x30
    return {**photos, "tiny": tiny, "strip": strip}


@pytest.mark.parametrize("case", EVAL_CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_eval_transform_equals_timm(case, eval_images):
    timm_uint8 = timm.data.create_transform(**case, normalize=False)
    timm_float = timm.data.create_transform(**case)
    ours_uint8 = create_transform(**case, normalize=False)
    ours_float = create_transform(**case)
    for name, img in eval_images.items():
        expected = timm_uint8(img).numpy().transpose(1, 2, 0)
        got = ours_uint8(img)
        assert got.dtype == np.uint8 and got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected, err_msg=name)
        expected = timm_float(img).numpy().transpose(1, 2, 0)
        got = ours_float(img)
        assert got.dtype == np.float32 and got.shape == expected.shape, name
        assert np.abs(got - expected).max() <= 1e-6, name


def test_eval_transform_from_model_config_equals_timm(photos):
    """The pretrained mobilenetv2_100 pipeline at 224 (bicubic, crop_pct 0.875), as timm's README builds it."""
    tmodel = timm.create_model("mobilenetv2_100.ra_in1k", pretrained=False)
    timm_tf = timm.data.create_transform(**timm.data.resolve_data_config({}, model=tmodel))
    ours_tf = create_transform(**resolve_data_config(types.SimpleNamespace(pretrained_cfg=tmodel.pretrained_cfg)))
    for img in photos.values():
        expected = timm_tf(img).numpy().transpose(1, 2, 0)
        got = ours_tf(img)
        assert got.shape == (224, 224, 3) and got.dtype == np.float32
        assert np.abs(got - expected).max() <= 1e-6


def test_no_aug_train_transform_equals_timm(photos):
    for input_size in (96, (3, 96, 96), (3, 80, 112)):
        timm_tf = timm.data.create_transform(input_size, is_training=True, no_aug=True, interpolation="random")
        ours_tf = create_transform(input_size, is_training=True, no_aug=True, interpolation="random")
        for img in photos.values():
            np.testing.assert_array_equal(ours_tf(img), timm_tf(img).numpy().transpose(1, 2, 0))


# --- training pieces at fixed parameters --------------------------------------------------------------------------


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_resized_crop_at_fixed_params_equals_torchvision(interpolation, photos):
    img = photos["hopper"]
    mode = timm.data.transforms.str_to_interp_mode(interpolation)
    boxes = [(0, 0, 600, 512), (13, 27, 211, 300), (500, 400, 100, 112), (100, 100, 64, 64), (5, 9, 17, 40)]
    for size in ((64, 64), (64, 80)):
        for top, left, h, w in boxes:
            expected = np.asarray(TF.resized_crop(img, top, left, h, w, list(size), mode))
            got = np.asarray(geometry.resized_crop(img, top, left, h, w, size, interpolation))
            np.testing.assert_array_equal(got, expected)


def test_flips_equal_torchvision(small_photos):
    for img in small_photos.values():
        np.testing.assert_array_equal(np.asarray(geometry.hflip(img)), np.asarray(TF.hflip(img)))
        np.testing.assert_array_equal(np.asarray(geometry.vflip(img)), np.asarray(TF.vflip(img)))


@pytest.mark.parametrize("factors", [(1.3, 0.7, 1.2, 0.05), (0.6, 1.4, 0.65, -0.2), (1.0, 1.0, 0.0, 0.5)])
def test_color_jitter_at_fixed_params_equals_torchvision(factors, small_photos):
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):
        for img in small_photos.values():
            expected = img
            for i in order:
                expected = adjust[i](expected, factors[i])
            got = color.color_jitter(img, order, factors)
            np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


# --- training pipeline, draw for draw ------------------------------------------------------------------------------

TRAIN_CASES = [
    # the mobilenetv2_100.ra_in1k recipe (RandAugment, random interpolation, pixel erasing is tested separately)
    dict(auto_augment="rand-m9-mstd0.5", interpolation="random", re_prob=0.5, re_mode="const"),
    dict(auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic", vflip=0.5, re_prob=0.6, re_count=3),
    dict(color_jitter=0.4, interpolation="random", hflip=0.5),  # colour jitter path (no RandAugment)
    dict(
        color_jitter=(0.3, 0.2, 0.4, 0.1),
        color_jitter_prob=0.8,
        grayscale_prob=0.3,
        interpolation="bilinear",
        scale=(0.3, 0.9),
        ratio=(0.5, 2.0),
    ),
    dict(auto_augment="rand-m7-n3-mstd0.5-t3a", interpolation="random"),  # '3a' keeps colour jitter on
]


@pytest.mark.parametrize("case", TRAIN_CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_train_transform_equals_timm_draw_for_draw(case, small_photos, recording_rng, timm_replay):
    """With timm's random draws replaced by the ones mv2jax made, timm's training pipeline gives the same image;
    the replay also checks that timm asks for the same draws (kind, range, order)."""
    input_size = (3, 64, 72)
    timm_tf = timm.data.create_transform(input_size, is_training=True, **case)
    ours_tf = create_transform(input_size, is_training=True, **case)
    for seed in range(12):
        for img in small_photos.values():
            rng = recording_rng(seed)
            got = ours_tf(img, rng)
            replay = timm_replay(rng.log)
            expected = timm_tf(img).numpy().transpose(1, 2, 0)
            replay.assert_consumed()
            assert got.shape == (64, 72, 3) and got.dtype == np.float32
            assert np.abs(got - expected).max() <= 1e-6


def test_train_transform_is_deterministic_per_generator_and_picklable(small_photos):
    tf = create_transform(
        96, is_training=True, auto_augment="rand-m9-mstd0.5", interpolation="random", re_prob=0.2, re_mode="pixel"
    )
    img = small_photos["china"]
    a = tf(img, np.random.default_rng(7))
    b = tf(img, np.random.default_rng(7))
    c = tf(img, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(tf))(img, np.random.default_rng(7)), a)  # workers
    raw = create_transform(96, is_training=True, normalize=False)(img, np.random.default_rng(0))
    assert raw.dtype == np.uint8 and raw.shape == (96, 96, 3)


# --- RandomResizedCrop parameter distribution ----------------------------------------------------------------------


def _rrc_draws(sample, n):
    draws = np.array([sample() for _ in range(n)], dtype=float)  # (top, left, h, w)
    return {
        "area": draws[:, 2] * draws[:, 3],
        "aspect": draws[:, 3] / draws[:, 2],
        "top": draws[:, 0],
        "left": draws[:, 1],
    }


def _same_distribution(a, b, alpha=1e-4):
    return all(stats.ks_2samp(a[k], b[k]).pvalue > alpha for k in a)


def test_rrc_params_follow_timm_distribution(photos):
    """Two-sample KS tests (area, aspect, top, left) between mv2jax's and timm's RRC parameters; the same test
    rejects a crop whose scale range is only slightly off, so it has the power to fail."""
    img = photos["china"]
    n = 8000
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    random.seed(0)
    theirs = _rrc_draws(lambda: RandomResizedCropAndInterpolation.get_params(img, scale, ratio), n)
    rng = np.random.default_rng(0)
    ours = _rrc_draws(lambda: geometry.get_rrc_params(img, scale, ratio, rng), n)
    assert _same_distribution(ours, theirs)
    wrong = _rrc_draws(lambda: geometry.get_rrc_params(img, (0.12, 1.0), ratio, rng), n)
    assert not _same_distribution(wrong, theirs)


def test_rrc_fallback_matches_timm(photos):
    """A 400x30 strip makes all 10 attempts fail: both fall back to the same central crop."""
    strip = photos["china"].crop((100, 200, 500, 230))
    random.seed(1)
    expected = RandomResizedCropAndInterpolation.get_params(strip, (0.5, 1.0), (3 / 4, 4 / 3))
    got = geometry.get_rrc_params(strip, (0.5, 1.0), (3 / 4, 4 / 3), np.random.default_rng(1))
    assert got == expected == (0, (400 - round(30 * 4 / 3)) // 2, 30, round(30 * 4 / 3))
    assert math.isclose(got[3] / got[2], 4 / 3, rel_tol=0.05)


def test_color_jitter_params_follow_torchvision_distribution():
    jitter_args = (0.4, 0.3, 0.2, 0.1)
    tv = torchvision.transforms.ColorJitter(*jitter_args)
    ours = color.ColorJitter.from_args(*jitter_args)
    assert (ours.brightness, ours.contrast, ours.saturation, ours.hue) == (
        tv.brightness,
        tv.contrast,
        tv.saturation,
        tv.hue,
    )
    n = 6000
    torch.manual_seed(0)
    theirs = [tv.get_params(tv.brightness, tv.contrast, tv.saturation, tv.hue) for _ in range(n)]
    rng = np.random.default_rng(0)
    mine = [ours.get_params(rng) for _ in range(n)]
    for k in range(4):
        assert stats.ks_2samp([p[k + 1] for p in theirs], [m[1][k] for m in mine]).pvalue > 1e-4
    perm_counts = np.zeros((2, 24))
    perms = {p: i for i, p in enumerate(itertools.permutations(range(4)))}
    for p in theirs:
        perm_counts[0, perms[tuple(p[0].tolist())]] += 1
    for m in mine:
        perm_counts[1, perms[tuple(m[0])]] += 1
    assert stats.chi2_contingency(perm_counts).pvalue > 1e-4
