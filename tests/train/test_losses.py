"""Losses against timm's LabelSmoothingCrossEntropy / SoftTargetCrossEntropy; float32 results from bf16 logits,
float64 ones from float64 logits; per-example weights (padded batches) equal timm's loss on the unpadded
examples."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from mv2jax.train.losses import label_smoothing_cross_entropy, soft_target_cross_entropy

B, C = 16, 10


def batch(seed=0):
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal((B, C))).astype(np.float32)
    labels = rng.integers(0, C, size=B)
    targets = rng.dirichlet(np.ones(C), size=B).astype(np.float32)
    return logits, labels, targets


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.4])
def test_label_smoothing_ce_equals_timm(smoothing):
    logits, labels, _ = batch()
    expected = LabelSmoothingCrossEntropy(smoothing)(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    got = jax.jit(label_smoothing_cross_entropy, static_argnums=2)(logits, labels, smoothing)
    assert got.dtype == jnp.float32
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_soft_target_ce_equals_timm():
    logits, _, targets = batch()
    expected = SoftTargetCrossEntropy()(torch.from_numpy(logits), torch.from_numpy(targets)).item()
    assert float(soft_target_cross_entropy(logits, targets)) == pytest.approx(expected, rel=1e-6)


def test_bf16_logits_give_float32_loss_of_the_upcast_logits():
    logits, labels, targets = batch()
    bf16 = jnp.asarray(logits, jnp.bfloat16)
    upcast = torch.from_numpy(np.array(bf16.astype(jnp.float32)))
    got = label_smoothing_cross_entropy(bf16, labels)
    assert got.dtype == jnp.float32
    expected = LabelSmoothingCrossEntropy(0.1)(upcast, torch.from_numpy(labels)).item()
    assert float(got) == pytest.approx(expected, rel=1e-6)
    got = soft_target_cross_entropy(bf16, jnp.asarray(targets, jnp.bfloat16))
    assert got.dtype == jnp.float32


def test_float64_logits_give_float64_loss_equal_to_timm_float64():
    logits, labels, targets = (x.astype(np.float64) if x.dtype.kind == "f" else x for x in batch())
    mask = (np.arange(B) < 11).astype(np.float64)
    with jax.enable_x64(True):
        hard = label_smoothing_cross_entropy(jnp.asarray(logits), labels, weights=mask, reduction="sum")
        soft = soft_target_cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
    assert hard.dtype == soft.dtype == jnp.float64
    t_logits = torch.from_numpy(logits)
    expected = LabelSmoothingCrossEntropy(0.1)(t_logits[:11], torch.from_numpy(labels[:11])).item() * 11
    assert float(hard) == pytest.approx(expected, rel=1e-13)
    expected = SoftTargetCrossEntropy()(t_logits, torch.from_numpy(targets)).item()
    assert float(soft) == pytest.approx(expected, rel=1e-13)


def test_weights_mask_padded_examples():
    logits, labels, targets = batch()
    n_real = 11
    mask = (np.arange(B) < n_real).astype(np.float32)
    expected = LabelSmoothingCrossEntropy(0.1)(
        torch.from_numpy(logits[:n_real]), torch.from_numpy(labels[:n_real])
    ).item()
    assert float(label_smoothing_cross_entropy(logits, labels, weights=mask)) == pytest.approx(expected, rel=1e-6)
    expected = SoftTargetCrossEntropy()(torch.from_numpy(logits[:n_real]), torch.from_numpy(targets[:n_real]))
    got = soft_target_cross_entropy(logits, targets, weights=mask)
    assert float(got) == pytest.approx(expected.item(), rel=1e-6)
    per_example = label_smoothing_cross_entropy(logits, labels, weights=mask, reduction="none")
    assert per_example.shape == (B,) and np.all(np.asarray(per_example[n_real:]) == 0)
    total = label_smoothing_cross_entropy(logits, labels, weights=mask, reduction="sum")
    assert float(total) == pytest.approx(expected_sum(logits, labels, n_real), rel=1e-6)
    assert float(label_smoothing_cross_entropy(logits, labels, weights=np.zeros(B))) == 0.0


def expected_sum(logits, labels, n):
    return LabelSmoothingCrossEntropy(0.1)(torch.from_numpy(logits[:n]), torch.from_numpy(labels[:n])).item() * n


def test_invalid_smoothing_and_reduction_raise():
    logits, labels, _ = batch()
    with pytest.raises(ValueError):
        label_smoothing_cross_entropy(logits, labels, smoothing=1.0)
    with pytest.raises(ValueError):
        label_smoothing_cross_entropy(logits, labels, reduction="max")
