"""mv2jax RandAugment against timm's `auto_augment` module, on real photographs."""

from __future__ import annotations

import random

import numpy as np
import pytest
import timm.data.auto_augment as taa
from PIL import Image
from scipy import stats

from mv2jax.data import randaugment as ra

ALL_OPS = sorted(taa.NAME_TO_OP)
MAGNITUDES = [0, 2.5, 5, 9, 10]
# hparams as timm's create_transform builds them (img_size 96, ImageNet mean), with fixed and random resampling
HPARAMS = {
    "fixed": {"translate_const": 43, "img_mean": (124, 116, 104), "interpolation": Image.Resampling.BILINEAR},
    "random": {"translate_const": 43, "img_mean": (124, 116, 104)},
}


def _timm_output(timm_fn, img, ours):
    """timm's output; where timm's posterize-to-0-bits hits the installed Pillow's 1..8 bits check, assert that
    mv2jax gave the black image that mask 0 means (Pillow without the check) and return it instead."""
    try:
        return timm_fn(img)
    except ValueError as e:
        assert "bits must be between" in str(e)
        assert not np.asarray(ours).any()
        return ours


def test_posterize_zero_bits_is_black_where_timm_now_raises(small_photos):
    img = small_photos["china"]
    with pytest.raises(ValueError, match="bits"):
        taa.AugmentOp("Posterize", prob=1.0, magnitude=1)(img)
    assert not np.asarray(ra.AugmentOp("Posterize", prob=1.0, magnitude=1)(img, np.random.default_rng(0))).any()
    assert not np.asarray(ra.AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)(img, None)).any()


def test_op_sets_and_names_match_timm():
    assert set(ra.NAME_TO_OP) == set(taa.NAME_TO_OP) and set(ra.LEVEL_TO_ARG) == set(taa.LEVEL_TO_ARG)
    assert list(ra.RAND_TRANSFORMS) == taa._RAND_TRANSFORMS
    assert list(ra.RAND_INCREASING_TRANSFORMS) == taa._RAND_INCREASING_TRANSFORMS
    assert list(ra.RAND_3A) == taa._RAND_3A
    assert ra.RAND_WEIGHTED_0 == taa._RAND_WEIGHTED_0 and ra.RAND_WEIGHTED_3A == taa._RAND_WEIGHTED_3A


@pytest.mark.parametrize("hparams_kind", sorted(HPARAMS))
@pytest.mark.parametrize("name", ALL_OPS)
def test_every_op_at_fixed_magnitude_equals_timm(name, hparams_kind, small_photos, recording_rng, timm_replay):
    """Each op at several magnitudes, applied with p=1: timm, fed the same random draws (sign, resampling filter,
    blur radius), gives the same pixels, and asks for exactly those draws."""
    hparams = HPARAMS[hparams_kind]
    for magnitude in MAGNITUDES:
        ours = ra.AugmentOp(name, prob=1.0, magnitude=magnitude, hparams=hparams)
        theirs = taa.AugmentOp(name, prob=1.0, magnitude=magnitude, hparams=hparams)
        for seed in range(4):  # both signs and both filters get drawn across seeds
            for img_name, img in small_photos.items():
                rng = recording_rng(seed)
                got = ours(img, rng)
                replay = timm_replay(rng.log)
                expected = _timm_output(theirs, img, got)
                replay.assert_consumed()
                np.testing.assert_array_equal(np.asarray(got), np.asarray(expected), err_msg=f"{img_name} {magnitude}")


def test_level_args_cover_both_signs(recording_rng):
    """Sanity for the op test above: its seeds really draw both signs of a signed op."""
    op = ra.AugmentOp("Rotate", prob=1.0, magnitude=9)
    signs = {np.sign(op.level_args(9, recording_rng(seed))[0]) for seed in range(4)}
    assert signs == {-1.0, 1.0}


CONFIGS = [
    "rand-m9-mstd0.5",
    "rand-m9-mstd0.5-inc1",
    "rand-m7-n3-mstd101",  # mstd > 100: uniform magnitude
    "rand-m15-mmax20-mstd1",
    "rand-m9-p0.8-n1-inc1",
    "rand-m9-mstd0.5-tweights",  # weighted choice, without replacement
    "rand-m9-n3-t3aw",
    "rand-m6-t3a",
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("hparams_kind", sorted(HPARAMS))
def test_rand_augment_equals_timm_draw_for_draw(config, hparams_kind, small_photos, recording_rng, timm_replay):
    """Whole RandAugment (op choice, per-op probability, magnitude noise, args, PIL ops) equals timm's."""
    ours = ra.rand_augment_transform(config, dict(HPARAMS[hparams_kind]))
    theirs = taa.rand_augment_transform(config, dict(HPARAMS[hparams_kind]))
    assert [op.name for op in ours.ops] == [op.name for op in theirs.ops]
    assert ours.num_layers == theirs.num_layers
    assert [dict(op.hparams) for op in ours.ops] == [op.hparams for op in theirs.ops]
    assert {(op.prob, op.magnitude) for op in ours.ops} == {(op.prob, op.magnitude) for op in theirs.ops}
    for seed in range(10):
        for img in small_photos.values():
            rng = recording_rng(seed)
            got = ours(img, rng)
            replay = timm_replay(rng.log)
            expected = _timm_output(theirs, img, got)
            if expected is not None:
                replay.assert_consumed()
            np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_config_parsing_matches_timm():
    for config in CONFIGS + ["rand-m9-n3", "rand-mstd0.5", "rand", "rand-m9-x"]:
        ours = ra.rand_augment_transform(config)
        theirs = taa.rand_augment_transform(config)
        assert [op.name for op in ours.ops] == [op.name for op in theirs.ops]
        assert ours.num_layers == theirs.num_layers
        if theirs.choice_weights is None:
            assert ours.choice_weights is None
        else:
            np.testing.assert_allclose(ours.choice_weights, theirs.choice_weights, rtol=1e-15)
        for o, t in zip(ours.ops, theirs.ops, strict=True):
            assert (o.prob, o.magnitude, dict(o.hparams)) == (t.prob, t.magnitude, t.hparams)
    for bad in ["rand-m9-q3", "rand-w0", "augmix-m3"]:
        with pytest.raises((ValueError, AssertionError)):
            taa.rand_augment_transform(bad)
        with pytest.raises(ValueError):
            ra.rand_augment_transform(bad)


# --- distributions -------------------------------------------------------------------------------------------------


def _timm_magnitudes(hparams, magnitude, n):
    """timm's own magnitude sampling: an AugmentOp whose level/op functions return the sampled magnitude."""
    op = taa.AugmentOp("Rotate", prob=1.0, magnitude=magnitude, hparams=hparams)
    op.level_fn = lambda m, _h: (m,)
    op.aug_fn = lambda _img, m, **_: m
    return np.array([op(None) for _ in range(n)])


@pytest.mark.parametrize("mstd, mmax, magnitude", [(0.5, None, 9), (float("inf"), None, 9), (2.0, 20, 15)])
def test_magnitude_sampling_follows_timm(mstd, mmax, magnitude):
    """Two-sample KS between mv2jax's and timm's sampled magnitudes (noise, clipping, mmax), plus a power check:
    a slightly wrong noise std is rejected by the same test."""
    n = 8000
    hparams = {"magnitude_std": mstd, **({"magnitude_max": mmax} if mmax else {})}
    random.seed(0)
    theirs = _timm_magnitudes(hparams, magnitude, n)
    rng = np.random.default_rng(0)
    op = ra.AugmentOp("Rotate", prob=1.0, magnitude=magnitude, hparams=hparams)
    ours = np.array([op.sample_magnitude(rng) for _ in range(n)])
    assert stats.ks_2samp(ours, theirs).pvalue > 1e-4
    assert ours.min() >= 0 and ours.max() <= (mmax or 10)
    wrong_std = mstd * 1.3 if mstd != float("inf") else 1.0
    wrong = ra.AugmentOp("Rotate", prob=1.0, magnitude=magnitude, hparams={**hparams, "magnitude_std": wrong_std})
    assert stats.ks_2samp([wrong.sample_magnitude(rng) for _ in range(n)], theirs).pvalue < 1e-4


def _timm_choices(config, n):
    """timm's own op choice: its RandAugment over stand-in ops that record their index."""
    theirs = taa.rand_augment_transform(config)
    ops = [lambda chosen, i=i: [*chosen, i] for i in range(len(theirs.ops))]
    chooser = taa.RandAugment(ops, theirs.num_layers, theirs.choice_weights)
    np.random.seed(0)
    return np.array([chooser([]) for _ in range(n)])


def _choice_table(a, b, num_ops):
    """Counts of (position, op) for two samples of chosen index lists, as a 2 x (layers * ops) table."""
    return np.array([[np.sum(x[:, k] == i) for k in range(x.shape[1]) for i in range(num_ops)] for x in (a, b)])


@pytest.mark.parametrize("config", ["rand-m9-mstd0.5", "rand-m9-n3-tweights"])
def test_op_choice_follows_timm(config):
    """Chi-square of per-position op frequencies, and the rate of repeated ops (uniform choice is *with*
    replacement in timm; weighted choice without), between mv2jax and timm."""
    n = 6000
    theirs = _timm_choices(config, n)
    ours_ra = ra.rand_augment_transform(config)
    rng = np.random.default_rng(0)
    ours = np.array([ours_ra.choose(rng) for _ in range(n)])
    num_ops = len(ours_ra.ops)
    table = _choice_table(ours, theirs, num_ops)
    table = table[:, table.sum(0) > 0]
    assert stats.chi2_contingency(table).pvalue > 1e-4
    repeats = [np.mean([len(set(row)) < len(row) for row in x]) for x in (ours, theirs)]
    if ours_ra.choice_weights is None:
        expected = 1 / num_ops  # P(two uniform picks with replacement coincide); 0 without replacement
        tol = 5 * np.sqrt(expected * (1 - expected) / n)
        assert abs(repeats[0] - expected) < tol and abs(repeats[1] - expected) < tol
    else:
        assert repeats == [0.0, 0.0]


def test_op_probability_gate_follows_timm(small_photos):
    """Fraction of calls that change the image, mv2jax vs timm (p=0.5, Invert always changes a photo)."""
    img, n = small_photos["flower"], 4000
    theirs_op = taa.AugmentOp("Invert", prob=0.5)
    random.seed(0)
    theirs = np.mean([theirs_op(img) is not img for _ in range(n)])
    ours_op = ra.AugmentOp("Invert", prob=0.5)
    rng = np.random.default_rng(0)
    ours = np.mean([ours_op(img, rng) is not img for _ in range(n)])
    tol = 5 * np.sqrt(0.25 / n)
    assert abs(ours - 0.5) < tol and abs(theirs - 0.5) < tol
