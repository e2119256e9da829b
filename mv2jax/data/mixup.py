"""Mixup / CutMix with timm's semantics (`timm.data.mixup.Mixup`), in jnp for use inside a jitted train step.

Images are NHWC float `[B, H, W, C]`, labels int `[B]`; every example is mixed with its mirror in the batch
(`images[::-1]`, timm's `x.flip(0)`), and targets are soft `[B, num_classes]` float32 with label smoothing
folded in (timm's `mixup_target`). Randomness comes from a JAX PRNG key: `mode='batch'` draws one lambda (and
one box) for the whole batch, `'elem'` one per example, `'pair'` one per mirrored pair.

Note: timm mixes within each rank's batch. To match a multi-device timm run exactly, call this per device
(e.g. under `shard_map`) rather than on the global batch.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

MODES = ("batch", "pair", "elem")


@dataclasses.dataclass(frozen=True)
class MixupConfig:
    """timm's `Mixup(...)` arguments. Mixing is active if `mixup_alpha > 0`, `cutmix_alpha > 0` or
    `cutmix_minmax` is set (which, as in timm, forces `cutmix_alpha = 1`)."""

    mixup_alpha: float = 1.0
    cutmix_alpha: float = 0.0
    cutmix_minmax: tuple[float, float] | None = None
    prob: float = 1.0
    switch_prob: float = 0.5
    mode: str = "batch"
    correct_lam: bool = True
    label_smoothing: float = 0.1
    num_classes: int = 1000

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mixup mode {self.mode!r} not in {MODES}")
        if self.cutmix_minmax is not None:
            if len(self.cutmix_minmax) != 2:
                raise ValueError(f"cutmix_minmax needs (min, max), got {self.cutmix_minmax}")
            object.__setattr__(self, "cutmix_minmax", tuple(self.cutmix_minmax))
            object.__setattr__(self, "cutmix_alpha", 1.0)
        if self.mixup_alpha <= 0 and self.cutmix_alpha <= 0:
            raise ValueError("mixup needs mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax")


class MixParams(NamedTuple):
    """Per-example draws (batch mode broadcasts one draw to all `B`).

    lam: f32 [B], the drawn lambda before any box correction (1 = leave the example alone).
    use_cutmix: bool [B]. box: int32 [B, 4] as (y_low, y_high, x_low, x_high), used where `use_cutmix`.
    """

    lam: jax.Array
    use_cutmix: jax.Array
    box: jax.Array


def one_hot(labels: jax.Array, num_classes: int, on_value: float = 1.0, off_value: float = 0.0) -> jax.Array:
    """f32 [B, num_classes] with `on_value` at each label and `off_value` elsewhere."""
    hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_)
    return jnp.where(hot, jnp.float32(on_value), jnp.float32(off_value))


def mixup_target(
    labels: jax.Array, num_classes: int, lam: float | jax.Array = 1.0, smoothing: float = 0.0
) -> jax.Array:
    """timm's `mixup_target`: smoothed one-hot targets mixed with the mirrored batch's, f32 [B, num_classes].

    `lam` is a scalar or per-example `[B]` / `[B, 1]`.
    """
    off_value = smoothing / num_classes
    y1 = one_hot(labels, num_classes, on_value=1.0 - smoothing + off_value, off_value=off_value)
    lam = jnp.asarray(lam, jnp.float32)
    lam = lam.reshape(-1, 1) if lam.ndim else lam
    return y1 * lam + y1[::-1] * (1.0 - lam)


def _beta_pairs(key: jax.Array, alphas: tuple[float, ...], n: int) -> jax.Array:
    """Symmetric Beta(a, a) draws f32 [len(alphas), n], one `loggamma` call for all (each call site of a
    gamma sampler adds seconds of compile time): Beta = G1 / (G1 + G2) = sigmoid(log G1 - log G2)."""
    a = jnp.repeat(jnp.asarray(alphas, jnp.float32), 2)[:, None]
    log_g = jax.random.loggamma(key, jnp.broadcast_to(a, (a.shape[0], n)))
    return jax.nn.sigmoid(log_g[0::2] - log_g[1::2])


def _draw_lam(key: jax.Array, cfg: MixupConfig, n: int, enabled: bool | jax.Array) -> tuple[jax.Array, jax.Array]:
    """timm's `_params_per_elem` / `_params_per_batch`: lambda f32 [n] and use_cutmix bool [n]."""
    k_apply, k_switch, k_beta = jax.random.split(key, 3)
    if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(k_switch, (n,)) < cfg.switch_prob
        lam_mix, lam_cut = _beta_pairs(k_beta, (cfg.mixup_alpha, cfg.cutmix_alpha), n)
        lam = jnp.where(use_cutmix, lam_cut, lam_mix)
    else:
        use_cutmix = jnp.full((n,), cfg.cutmix_alpha > 0)
        lam = _beta_pairs(k_beta, (max(cfg.mixup_alpha, cfg.cutmix_alpha),), n)[0]
    apply = (jax.random.uniform(k_apply, (n,)) < cfg.prob) & jnp.asarray(enabled)
    return jnp.where(apply, lam, 1.0), use_cutmix & apply


def _draw_box(key: jax.Array, cfg: MixupConfig, lam: jax.Array, hw: tuple[int, int]) -> jax.Array:
    """timm's `rand_bbox` (square-ish box of area ~(1 - lam), centre uniform, clipped) or `rand_bbox_minmax`.

    Returns int32 [n, 4] (y_low, y_high, x_low, x_high).
    """
    (h, w), n = hw, lam.shape[0]
    k_cy, k_cx, k_h, k_w = jax.random.split(key, 4)
    if cfg.cutmix_minmax is None:
        ratio = jnp.sqrt(1.0 - lam)
        cut_h, cut_w = jnp.floor(h * ratio).astype(jnp.int32), jnp.floor(w * ratio).astype(jnp.int32)
        cy, cx = jax.random.randint(k_cy, (n,), 0, h), jax.random.randint(k_cx, (n,), 0, w)
        yl, yh = jnp.clip(cy - cut_h // 2, 0, h), jnp.clip(cy + (cut_h + 1) // 2, 0, h)
        xl, xh = jnp.clip(cx - cut_w // 2, 0, w), jnp.clip(cx + (cut_w + 1) // 2, 0, w)
    else:
        lo, hi = cfg.cutmix_minmax
        cut_h = jax.random.randint(k_h, (n,), int(h * lo), int(h * hi))
        cut_w = jax.random.randint(k_w, (n,), int(w * lo), int(w * hi))
        yl, xl = jax.random.randint(k_cy, (n,), 0, h - cut_h + 1), jax.random.randint(k_cx, (n,), 0, w - cut_w + 1)
        yh, xh = yl + cut_h, xl + cut_w
    return jnp.stack([yl, yh, xl, xh], axis=-1).astype(jnp.int32)


def draw_params(
    key: jax.Array, cfg: MixupConfig, batch_size: int, hw: tuple[int, int], enabled: bool | jax.Array = True
) -> MixParams:
    """Draw lambda, cutmix switch and box for a batch of `batch_size` NHWC images of spatial size `hw`."""
    if batch_size % 2:
        raise ValueError(f"mixup needs an even batch size, got {batch_size}")
    n = {"batch": 1, "pair": batch_size // 2, "elem": batch_size}[cfg.mode]
    k_lam, k_box = jax.random.split(key)
    lam, use_cutmix = _draw_lam(k_lam, cfg, n, enabled)
    box = _draw_box(k_box, cfg, lam, hw)
    if cfg.mode == "pair":  # example B-1-i shares pair i's draw
        lam, use_cutmix, box = (jnp.concatenate([a, a[::-1]]) for a in (lam, use_cutmix, box))
    elif cfg.mode == "batch":
        lam, use_cutmix, box = (jnp.broadcast_to(a, (batch_size,) + a.shape[1:]) for a in (lam, use_cutmix, box))
    return MixParams(lam, use_cutmix, box)


def apply_params(
    images: jax.Array, labels: jax.Array, params: MixParams, cfg: MixupConfig
) -> tuple[jax.Array, jax.Array]:
    """Mix NHWC `images` [B,H,W,C] with `images[::-1]` as `params` say; return (images, f32 targets [B, K])."""
    _, h, w, _ = images.shape
    flipped = images[::-1]
    yl, yh, xl, xh = (params.box[:, i, None, None] for i in range(4))
    rows, cols = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
    in_box = ((rows >= yl) & (rows < yh) & (cols >= xl) & (cols < xh))[..., None]
    lam = params.lam.astype(images.dtype)[:, None, None, None]
    blended = jnp.where(lam == 1, images, images * lam + flipped * (1 - lam))
    cutmix = params.use_cutmix[:, None, None, None]
    mixed = jnp.where(cutmix, jnp.where(in_box, flipped, images), blended)
    area = (params.box[:, 1] - params.box[:, 0]) * (params.box[:, 3] - params.box[:, 2])
    corrected = 1.0 - area.astype(jnp.float32) / float(h * w)
    use_corrected = params.use_cutmix & (cfg.correct_lam or cfg.cutmix_minmax is not None)
    lam_target = jnp.where(use_corrected, corrected, params.lam)
    return mixed, mixup_target(labels, cfg.num_classes, lam_target, cfg.label_smoothing)


def mixup(
    key: jax.Array, images: jax.Array, labels: jax.Array, cfg: MixupConfig, enabled: bool | jax.Array = True
) -> tuple[jax.Array, jax.Array]:
    """timm's `Mixup(**cfg)(x, target)` for NHWC `images` [B,H,W,C] and int `labels` [B], drawn from `key`.

    Returns mixed images (same dtype) and soft targets f32 [B, num_classes]. `enabled=False` (timm's
    `mixup_enabled`, e.g. after `--mixup-off-epoch`) leaves images alone and only smooths the targets.
    """
    params = draw_params(key, cfg, images.shape[0], images.shape[1:3], enabled)
    return apply_params(images, labels, params, cfg)
