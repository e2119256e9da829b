"""train.py's eval step and `python -m mv2jax.validate` count top-1 / top-5 by one rule, timm's `accuracy()` with
`topk` (the label is among the classes `top_k` returns; a tie ranks the lower class first), also when logits tie."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from timm.utils import accuracy

import mv2jax
from mv2jax import validate
from mv2jax.mesh import create_mesh
from mv2jax.train.state import split_model
from mv2jax.train.step import make_eval_step

NUM_CLASSES, IMG = 8, 32
# Every image gets these logits (the classifier's weight is zero): classes 1, 2 and 3 tie for first, 4 to 7 tie
# for fifth. Labels on tied classes make the two rules differ: ranking a label by the classes strictly above it
# counts labels 2 and 3 as top-1 and 6 and 7 as top-5; `top_k` does not.
BIAS = np.array([0.0, 2.0, 2.0, 2.0, 1.0, 0.5, 0.5, 0.5], np.float32)
LABELS = np.array([0, 1, 2, 3, 4, 5, 6, 7], np.int32)


def tied_model() -> mv2jax.models.MobileNetV2:
    model = mv2jax.create_model("mobilenetv2_035", num_classes=NUM_CLASSES).eval()
    model.classifier.weight[...] = jnp.zeros_like(model.classifier.weight[...])
    model.classifier.bias[...] = jnp.asarray(BIAS)
    return model


def test_train_eval_and_validate_count_ties_alike() -> None:
    model = tied_model()
    images = np.random.default_rng(0).standard_normal((len(LABELS), IMG, IMG, 3)).astype(np.float32)
    batch = {"image": images, "label": LABELS, "mask": np.ones(len(LABELS), bool)}

    graphdef, params, batch_stats, rng_state = split_model(model)
    train_metrics = make_eval_step(graphdef, rng_state)(params, batch_stats, batch)
    mesh = create_mesh()
    predict = validate.make_predict_fn(model, mesh, images.shape)
    preds = validate.evaluate(predict, [batch], mesh, num_batches=1)

    logits = np.array(nnx.jit(lambda m, x: m(x))(model, images))
    np.testing.assert_array_equal(logits, np.broadcast_to(BIAS, logits.shape))  # the ties are real
    timm_top1, timm_top5 = (
        float(a) * len(LABELS) / 100 for a in accuracy(torch.from_numpy(logits), torch.from_numpy(LABELS), (1, 5))
    )
    assert (timm_top1, timm_top5) == (1, 5)  # labels 1 | 1, 2, 3, 4, 5
    assert int(preds.correct(1).sum()) == preds.totals["top1"] == float(train_metrics["top1"]) == timm_top1
    assert int(preds.correct(5).sum()) == preds.totals["top5"] == float(train_metrics["top5"]) == timm_top5
