"""train.py's per-epoch eval and `python -m mv2jax.validate` are one evaluation: on the same weights and images they
count the same images, the same top-1 and top-5, and the same loss up to float32 rounding.

The images are the digits' 359 held-out examples at 32 px in batches of 64, so the last batch holds 39 real
examples and 25 of padding. The weights are a timm `mobilenetv2_035` with randomised BatchNorm, saved once and
read by both: train.py's run (`--initial-checkpoint`) evaluates the NNX module, validate (`--checkpoint`) the
BatchNorm-folded network. Those are two float32 roundings of the same maths, so the loss bound comes from a
yardstick measured here: timm's own float32 error against timm in float64 on the same images.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from timm.utils import accuracy

from mv2jax.data import Digits, create_eval_transform, resolve_data_config
from mv2jax.metrics import averages, example_metrics, masked_sums
from mv2jax.train.config import parse_config
from mv2jax.train.loop import eval_totals
from mv2jax.train.run import build_run
from mv2jax.validate import build_parser, validate_with_predictions
from tests.timm_reference import run_timm, timm_model

MODEL, NUM_CLASSES, IMG, SEED = "mobilenetv2_035", 10, 32, 0
EVAL_BATCH = 64
# As the parity tests: an mv2jax float32 forward may be this many times as far from float64 as timm's float32.
TOLERANCE_FACTOR = 2.0
FLOAT32_ROUNDOFF = 2.0**-24


@dataclasses.dataclass(frozen=True)
class Reference:
    """timm's logits of the held-out digits in float64 and float32, their per-example cross entropy, labels."""

    labels: np.ndarray
    logits64: np.ndarray
    logits32: np.ndarray

    def loss(self, logits: np.ndarray) -> np.ndarray:
        """Per-example cross entropy, in float64 (of float64 logits) or as torch computes it in float32."""
        return torch.nn.functional.cross_entropy(
            torch.from_numpy(logits), torch.from_numpy(self.labels), reduction="none"
        ).numpy()

    def correct_counts(self) -> tuple[int, int]:
        """(top-1, top-5) correct counts of the float64 logits, by timm's `accuracy()`."""
        pct = accuracy(torch.from_numpy(self.logits64), torch.from_numpy(self.labels), topk=(1, 5))
        return tuple(round(float(p) * len(self.labels) / 100) for p in pct)

    def loss_sum_bound(self) -> float:
        """How far a float32 evaluation's loss sum may be from the float64 one: its forward's error, at most
        TOLERANCE_FACTOR times timm float32's own (summed over the examples), plus the rounding of float32 sums
        in which each loss passes through at most m = (batch + batches) additions, gamma_m * sum |loss|."""
        loss64 = self.loss(self.logits64)
        forward = TOLERANCE_FACTOR * np.abs(self.loss(self.logits32).astype(np.float64) - loss64).sum()
        depth = EVAL_BATCH + -(-len(self.labels) // EVAL_BATCH)
        gamma = depth * FLOAT32_ROUNDOFF / (1 - depth * FLOAT32_ROUNDOFF)
        return forward + gamma * np.abs(loss64).sum()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    tmodel = timm_model(MODEL, seed=SEED, num_classes=NUM_CLASSES)
    path = tmp_path_factory.mktemp("weights") / f"{MODEL}.safetensors"
    save_file({k: v.contiguous() for k, v in tmodel.state_dict().items()}, str(path))
    return path, tmodel


@pytest.fixture(scope="module")
def reference(weights) -> Reference:
    _, tmodel = weights
    transform = create_eval_transform(resolve_data_config(tmodel, img_size=IMG))
    digits = Digits("validation", image_size=IMG)
    images = np.stack([transform(digits[i][0]) for i in range(len(digits))])
    ref = Reference(
        digits.labels, run_timm(tmodel, images, dtype=torch.float64), run_timm(tmodel, images, dtype=torch.float32)
    )
    # Equal top-k counts are well posed only if no ranking near the top-1 or top-5 boundary is within rounding.
    ranked = -np.sort(-ref.logits64, axis=1)
    gaps = ranked[:, [0, 4]] - ranked[:, [1, 5]]
    assert gaps.min() > 4 * TOLERANCE_FACTOR * np.abs(ref.logits32 - ref.logits64).max()
    return ref


def train_eval(path: Path, output: Path) -> dict:
    """train.py's epoch-end eval of the run's (raw) weights: totals over its eval loader."""
    flags = ["--model", MODEL, "--dataset", "digits", "--img-size", str(IMG), "--num-classes", str(NUM_CLASSES)]
    flags += ["-vb", str(EVAL_BATCH), "-j", "0", "--initial-checkpoint", str(path), "--output", str(output)]
    run, state = build_run(parse_config(flags))
    return eval_totals(run, [(state.params, state.batch_stats)])[0]


def validate_eval(path: Path) -> tuple[dict, dict]:
    """`python -m mv2jax.validate`'s totals and result dict."""
    flags = ["--model", MODEL, "--checkpoint", str(path), "--dataset", "digits", "--img-size", str(IMG)]
    flags += ["--num-classes", str(NUM_CLASSES), "-b", str(EVAL_BATCH), "-j", "0"]
    results, preds = validate_with_predictions(build_parser().parse_args(flags))
    return preds.totals, results


def test_train_eval_and_validate_count_the_same_images_top_k_and_loss(weights, reference, tmp_path):
    path, _ = weights
    train, (val, results) = train_eval(path, tmp_path), validate_eval(path)
    count = len(reference.labels)
    assert count % EVAL_BATCH, "the last batch must be padded"
    assert int(train["count"]) == int(val["count"]) == results["count"] == count
    top1, top5 = reference.correct_counts()
    assert (int(train["top1"]), int(train["top5"])) == (int(val["top1"]), int(val["top5"])) == (top1, top5)
    bound, loss64 = reference.loss_sum_bound(), reference.loss(reference.logits64).sum()
    for name, totals in (("train", train), ("validate", val)):
        error = abs(float(totals["loss_sum"]) - loss64)
        assert error <= bound, f"{name}'s loss sum is {error:.3e} from float64's, over the float32 bound {bound:.3e}"
    assert abs(float(train["loss_sum"]) - float(val["loss_sum"])) <= 2 * bound
    means = averages(val)
    assert results["loss"] == means["loss"] and results["top1"] == round(means["top1"], 4)
    assert averages(train)["top1"] == means["top1"] and averages(train)["top5"] == means["top5"]


def test_padding_never_counts_whatever_it_holds():
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((6, 7)).astype(np.float32), np.array([0, 1, 2, 3, 4, 5])
    mask = np.array([True, True, True, True, False, False])
    padded = logits.copy()
    padded[4:] = np.nan  # what padding holds must not reach any sum
    got = masked_sums(example_metrics(jnp.asarray(padded), labels), labels, mask)
    real = masked_sums(example_metrics(jnp.asarray(logits[:4]), labels[:4]), labels[:4])
    assert [int(got[k]) for k in ("top1", "top5", "count")] == [int(real[k]) for k in ("top1", "top5", "count")]
    assert int(got["count"]) == 4
    assert float(got["loss_sum"]) == pytest.approx(float(real["loss_sum"]), rel=1e-6)
