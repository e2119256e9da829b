"""Mixup/CutMix equals timm's `Mixup` for the same draws: mv2jax draws lambda/switch/box from a JAX key, timm
is made to use exactly those draws (its `_params_per_batch`/`_params_per_elem` and box functions patched),
and images and soft targets must match. Also: targets equal timm's `mixup_target`, the jitted version equals
the eager one, and the draws follow timm's distributions."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm.data.mixup as timm_mixup
import torch

from mv2jax.data.mixup import MixParams, MixupConfig, apply_params, draw_params, mixup, mixup_target

B, H, W, C, K = 8, 12, 10, 3, 5
apply_jit = jax.jit(apply_params, static_argnums=3)  # compiled once per config; eager dispatch is slower
mixup_jit = jax.jit(mixup, static_argnums=3)

CONFIGS = {
    "mixup": MixupConfig(mixup_alpha=0.8, cutmix_alpha=0.0, num_classes=K),
    "cutmix": MixupConfig(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=K),
    "both": MixupConfig(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.8, switch_prob=0.5, num_classes=K),
    "minmax": MixupConfig(mixup_alpha=0.0, cutmix_minmax=(0.2, 0.8), num_classes=K, label_smoothing=0.0),
    "uncorrected": MixupConfig(mixup_alpha=0.0, cutmix_alpha=1.0, correct_lam=False, num_classes=K),
}


def _batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, H, W, C)).astype(np.float32), rng.integers(0, K, B)


def _timm_mixup(cfg: MixupConfig) -> timm_mixup.Mixup:
    return timm_mixup.Mixup(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})


def _fixed_params(cfg: MixupConfig, seed: int) -> MixParams:
    """Hand-picked draws in mv2jax's layout (one per batch / pair / element, broadcast or mirrored to [B]):
    some examples untouched (lam 1), the rest mixed or cut, boxes touching the borders included."""
    rng = np.random.default_rng(seed)
    n = {"batch": 1, "pair": B // 2, "elem": B}[cfg.mode]
    lam = np.where(rng.random(n) < 0.25, 1.0, rng.uniform(0.05, 0.95, n)).astype(np.float32)
    use_cutmix = (
        (rng.random(n) < 0.5) if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0 else np.full(n, cfg.cutmix_alpha > 0)
    )
    use_cutmix &= lam != 1
    y, x = np.sort(rng.integers(0, H + 1, (n, 2)), axis=1), np.sort(rng.integers(0, W + 1, (n, 2)), axis=1)
    box = np.stack([y[:, 0], y[:, 1], x[:, 0], x[:, 1]], axis=1).astype(np.int32)
    if cfg.mode == "pair":
        lam, use_cutmix, box = (np.concatenate([a, a[::-1]]) for a in (lam, use_cutmix, box))
    elif cfg.mode == "batch":
        lam, use_cutmix, box = (np.repeat(a, B, axis=0) for a in (lam, use_cutmix, box))
    return MixParams(jnp.asarray(lam), jnp.asarray(use_cutmix), jnp.asarray(box))


def _pin_timm_draws(monkeypatch, cfg: MixupConfig, params: MixParams) -> None:
    """Make timm use the same draws: lambda/switch per batch or element, then one box per cutmixed element."""
    lam, use_cutmix, box = (np.asarray(a) for a in params)
    n = {"batch": 1, "pair": B // 2, "elem": B}[cfg.mode]
    lam, use_cutmix, box = lam[:n], use_cutmix[:n], box[:n]
    monkeypatch.setattr(timm_mixup.Mixup, "_params_per_batch", lambda self: (float(lam[0]), bool(use_cutmix[0])))
    monkeypatch.setattr(timm_mixup.Mixup, "_params_per_elem", lambda self, size: (lam.copy(), use_cutmix.copy()))
    boxes = iter([tuple(int(v) for v in box[i]) for i in range(n) if use_cutmix[i] and lam[i] != 1])
    monkeypatch.setattr(timm_mixup, "rand_bbox", lambda shape, lam, count=None: next(boxes))
    monkeypatch.setattr(timm_mixup, "rand_bbox_minmax", lambda shape, minmax, count=None: next(boxes))


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_mixup_equals_timm_for_the_same_draws(monkeypatch, name, mode):
    cfg = dataclasses.replace(CONFIGS[name], mode=mode)
    images, labels = _batch()
    kinds = set()
    for seed in range(4):
        params = _fixed_params(cfg, seed)
        lam, cut = np.asarray(params.lam), np.asarray(params.use_cutmix)
        kinds |= {"cut" if c else "mix" if v != 1 else "none" for v, c in zip(lam, cut, strict=True)}
        ours_x, ours_y = apply_jit(jnp.asarray(images), jnp.asarray(labels), params, cfg)
        _pin_timm_draws(monkeypatch, cfg, params)
        x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
        timm_x, timm_y = _timm_mixup(cfg)(x, torch.from_numpy(labels))
        np.testing.assert_allclose(np.asarray(ours_x), timm_x.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(ours_y), timm_y.numpy(), rtol=1e-6, atol=1e-7)
    assert kinds == {"none", "mix", "cut"} if name == "both" else {"none", "mix" if name == "mixup" else "cut"}


@pytest.mark.parametrize("lam", [1.0, 0.3, "per_example"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_targets_equal_timm_mixup_target(lam, smoothing):
    labels = np.random.default_rng(1).integers(0, K, B)
    lam = np.linspace(0.1, 1.0, B, dtype=np.float32)[:, None] if lam == "per_example" else lam
    ours = mixup_target(jnp.asarray(labels), K, jnp.asarray(lam), smoothing)
    theirs = timm_mixup.mixup_target(torch.from_numpy(labels), K, torch.as_tensor(lam), smoothing)
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), rtol=1e-6, atol=1e-7)


def test_jitted_minmax_elem_mixup_cuts_allowed_boxes_from_the_mirror_example():
    cfg = dataclasses.replace(CONFIGS["minmax"], mode="elem")
    images, labels = _batch(2)
    x, y = mixup_jit(jax.random.key(3), images, labels, cfg, jnp.asarray(True))
    x, y, flipped = np.asarray(x), np.asarray(y), images[::-1]
    assert x.dtype == np.float32 and y.shape == (B, K)
    for i in range(B):
        changed = (
            np.flatnonzero((x[i] != images[i]).any(axis=-1).any(axis=1)),
            np.flatnonzero((x[i] != images[i]).any(axis=-1).any(axis=0)),
        )
        if changed[0].size == 0:  # untouched (probability 1 - prob = 0 here, but allowed)
            continue
        (y0, y1), (x0, x1) = (changed[0][[0, -1]] + [0, 1]), (changed[1][[0, -1]] + [0, 1])
        assert int(H * 0.2) <= y1 - y0 < int(H * 0.8) and int(W * 0.2) <= x1 - x0 < int(W * 0.8)
        np.testing.assert_array_equal(x[i, y0:y1, x0:x1], flipped[i, y0:y1, x0:x1])
        lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)
        np.testing.assert_allclose(
            y[i],
            np.asarray(mixup_target(labels, K, 1.0))[i] * lam
            + np.asarray(mixup_target(labels, K, 1.0))[B - 1 - i] * (1 - lam),
            atol=1e-6,
        )


def test_disabled_mixup_only_smooths_targets():
    """timm's `mixup_enabled = False` (after --mixup-off-epoch), here a traced flag: no recompile."""
    cfg = dataclasses.replace(CONFIGS["minmax"], mode="elem")  # the jitted test's config: same compiled step
    images, labels = _batch(3)
    x, y = mixup_jit(jax.random.key(0), images, labels, cfg, jnp.asarray(False))
    np.testing.assert_array_equal(np.asarray(x), images)
    np.testing.assert_allclose(np.asarray(y), np.eye(K, dtype=np.float32)[labels])


def test_draws_follow_timms_distributions():
    """Batch-mode draws from JAX keys vs timm's numpy draws: how often each case occurs, the box-corrected
    lambda's mean and spread, and rand_bbox's box size int(H * sqrt(1 - lam)) wherever the box is not clipped."""
    cfg, n = CONFIGS["both"], 2000
    params = jax.jit(jax.vmap(lambda k: draw_params(k, cfg, B, (H, W))))(jax.random.split(jax.random.key(0), n))
    lam, cut, box = np.asarray(params.lam[:, 0]), np.asarray(params.use_cutmix[:, 0]), np.asarray(params.box[:, 0])
    area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])
    ours = np.where(cut, 1 - area / (H * W), lam)
    np.random.seed(0)
    m, theirs, theirs_cut = _timm_mixup(cfg), [], []
    for _ in range(n):
        lam_t, cut_t = m._params_per_batch()
        theirs.append(timm_mixup.cutmix_bbox_and_lam((B, C, H, W), lam_t)[1] if cut_t else lam_t)
        theirs_cut.append(cut_t)
    assert abs(np.mean(ours) - np.mean(theirs)) < 0.03 and abs(np.std(ours) - np.std(theirs)) < 0.03
    assert abs(np.mean(lam == 1) - np.mean(np.asarray(theirs) == 1)) < 0.04
    assert abs(np.mean(cut) - np.mean(theirs_cut)) < 0.05
    inside = cut & (box[:, 0] > 0) & (box[:, 1] < H)
    assert inside.sum() > 100
    np.testing.assert_array_equal(
        (box[:, 1] - box[:, 0])[inside], (H * np.sqrt(1 - lam[inside].astype(np.float64))).astype(int)
    )


def test_minmax_forces_cutmix_and_odd_batch_is_rejected():
    cfg = MixupConfig(mixup_alpha=0.0, cutmix_minmax=(0.2, 0.8))
    assert cfg.cutmix_alpha == 1.0
    with pytest.raises(ValueError, match="even batch"):
        draw_params(jax.random.key(0), cfg, 7, (H, W))
    with pytest.raises(ValueError, match="mixup_alpha > 0"):
        MixupConfig(mixup_alpha=0.0, cutmix_alpha=0.0)
