"""A classifier's evaluation, shared by train.py's per-epoch eval and `python -m mv2jax.validate`: the cross-entropy
loss, top-k correctness under timm's `accuracy()` rule, and sums over the real examples of a padded batch.

logits: [B, num_classes] (any float dtype); labels: int [B] class ids; mask: bool [B] (False = padding, not
counted). The per-example functions work on JAX arrays inside `jit`; `top_k_correct` also on numpy arrays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

TOPK = 5  # timm reports Acc@1 and Acc@5 (top-min(5, num_classes), as timm.utils.accuracy)


def loss_dtype(logits: jax.Array) -> jnp.dtype:
    """float32 for half- and single-precision logits (mixed precision keeps the loss in float32), float64 for
    float64 logits (so a float64 run is float64 end to end)."""
    return jnp.promote_types(jnp.float32, logits.dtype)


def log_probs(logits: jax.Array) -> jax.Array:
    """log_softmax over the classes, in `loss_dtype(logits)`: [B, num_classes]."""
    return jax.nn.log_softmax(logits.astype(loss_dtype(logits)), axis=-1)


def nll(logprobs: jax.Array, labels: jax.Array) -> jax.Array:
    """[B]: minus the log-probability of each example's label."""
    return -jnp.take_along_axis(logprobs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """[B] per-example cross entropy in `loss_dtype(logits)`: timm validate's `CrossEntropyLoss` before its
    mean over the batch."""
    return nll(log_probs(logits), labels)


def top_k_classes(logits: jax.Array, k: int = TOPK) -> jax.Array:
    """int32 [B, min(k, classes)]: the classes timm's `accuracy(output, target, topk)` ranks first, best first.
    Tied logits rank the lower class first (`lax.top_k`), so a label tied with a lower class is not top-1."""
    return jax.lax.top_k(logits, min(k, logits.shape[-1]))[1]


def top_k_correct(top: Any, labels: Any, k: int) -> Any:
    """bool [B]: the label is among the first k of `top` (from `top_k_classes`); numpy or JAX arrays alike."""
    return (top[:, :k] == labels[:, None]).any(axis=-1)


def example_metrics(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Per-example outputs of an eval forward: `topk` int32 [B, min(TOPK, classes)] (class ids, best first) and
    `loss` float32 [B] (cross entropy of the logits taken in float32, whatever the model's dtype)."""
    logits = logits.astype(jnp.float32)
    return {"topk": top_k_classes(logits), "loss": cross_entropy(logits, labels)}


def masked_sums(
    example: Mapping[str, jax.Array], labels: jax.Array, mask: jax.Array | None = None
) -> dict[str, jax.Array]:
    """Sums over the examples with `mask` True (all without a mask) of `example_metrics` outputs: `loss_sum`
    (float32), `top1`, `top5` (correct counts, int32; top-5 is top-min(5, classes)) and `count` (int32). Sums
    of several batches add up leaf by leaf; `averages` turns the totals into the reported numbers."""
    valid = jnp.ones(labels.shape, bool) if mask is None else jnp.asarray(mask, bool)
    top = example["topk"]
    return {
        "loss_sum": jnp.sum(jnp.where(valid, example["loss"], 0.0)),
        "top1": jnp.sum(top_k_correct(top, labels, 1) & valid, dtype=jnp.int32),
        "top5": jnp.sum(top_k_correct(top, labels, TOPK) & valid, dtype=jnp.int32),
        "count": jnp.sum(valid, dtype=jnp.int32),
    }


def averages(totals: Mapping[str, Any]) -> dict[str, float]:
    """timm's reported numbers from `masked_sums` totals: `loss` (mean cross entropy; NaN with no examples),
    `top1` and `top5` (percent of the examples)."""
    count = int(totals["count"])
    return {
        "loss": float(totals["loss_sum"]) / count if count else math.nan,
        "top1": 100.0 * int(totals["top1"]) / max(count, 1),
        "top5": 100.0 * int(totals["top5"]) / max(count, 1),
    }
