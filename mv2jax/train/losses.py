"""timm's classification losses (LabelSmoothingCrossEntropy, SoftTargetCrossEntropy), computed in float32 or wider.

logits: [B, num_classes] (any float dtype; bfloat16/float16/float32 are cast up to float32 before log_softmax,
float64 stays float64, as `loss_dtype`); labels: [B] int class ids;
targets: [B, num_classes] probabilities. `weights`: optional [B] per-example weights or 0/1 mask (e.g. padded
eval batches). Reductions: 'mean' (weighted mean over the batch, as timm's `.mean()` when weights are None),
'sum' (weighted sum), 'none' (per-example losses times weights).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mv2jax.metrics import log_probs, loss_dtype, nll

REDUCTIONS = ("mean", "sum", "none")


def _reduce(per_example: jax.Array, weights: jax.Array | None, reduction: str) -> jax.Array:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if weights is not None:
        weights = jnp.asarray(weights, per_example.dtype)
        per_example = per_example * weights
    if reduction == "none":
        return per_example
    total = per_example.sum()
    if reduction == "sum":
        return total
    if weights is None:
        return total / per_example.shape[0]
    count = weights.sum()
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)


def label_smoothing_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    smoothing: float = 0.1,
    weights: jax.Array | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """timm LabelSmoothingCrossEntropy: (1 - smoothing) * nll + smoothing * mean_c(-log p), over the
    log-probabilities of `mv2jax.metrics`; result in `loss_dtype(logits)`.

    `smoothing=0` is `mv2jax.metrics.cross_entropy` (timm's validation loss).
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    logprobs = log_probs(logits)
    smooth = -logprobs.mean(axis=-1)
    return _reduce((1.0 - smoothing) * nll(logprobs, labels) + smoothing * smooth, weights, reduction)


def soft_target_cross_entropy(
    logits: jax.Array,
    targets: jax.Array,
    weights: jax.Array | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """timm SoftTargetCrossEntropy: sum_c(-target * log p) per example (mixup/cutmix targets); result in
    `loss_dtype(logits)`."""
    logprobs = log_probs(logits)
    per_example = jnp.sum(-targets.astype(loss_dtype(logits)) * logprobs, axis=-1)
    return _reduce(per_example, weights, reduction)
