"""`python -m mv2jax.validate`: top-1 / top-5 accuracy and cross-entropy of a model's weights on a dataset, as
timm's validate.py computes them (same flags, same preprocessing, same result dict).

    python -m mv2jax.validate --model mobilenetv2_100 --checkpoint model.safetensors --data-dir /imagenet

The model is an mv2jax NNX model (timm weights: --pretrained from the Hub cache, or --checkpoint FILE/DIR). The
eval transform is resolved from the model's pretrained_cfg plus the overrides exactly as timm's
`resolve_data_config`; the grain eval loader visits every example exactly once (the last batch is padded and the
padding masked out), and one jitted forward runs over a device mesh with the batch split on its `data` axis.
Accuracy and loss are computed on the host from per-example outputs, so counts are exact integers.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mv2jax.cli_parser import OneLineErrorParser
from mv2jax.convert import hub_weights, read_checkpoint, timm_to_mv2jax
from mv2jax.data import create_dataset, create_loader, create_transform, resolve_data_config, to_global_batch
from mv2jax.data.datasets import DATASET_NAMES_HELP
from mv2jax.models import MobileNetV2, create_model, fuse_for_inference
from mv2jax.models.backends import CONV_IMPLS
from mv2jax.train.losses import label_smoothing_cross_entropy
from mv2jax.train.mesh import create_mesh, replicated
from mv2jax.train.step import TOPK, top_k_classes, top_k_correct

_logger = logging.getLogger("validate")

DEFAULT_MODEL = "mobilenetv2_100"
AMP_DTYPES = {"float16": jnp.float16, "bfloat16": jnp.bfloat16}
RESULTS_FORMATS = ("csv", "json")


# --- command line (timm's validate.py flag names and help text) ---------------------------------------------------


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data", nargs="?", metavar="DIR", const=None, help="path to dataset (*deprecated*, use --data-dir)"
    )
    parser.add_argument("--data-dir", metavar="DIR", help="path to dataset (root dir)")
    parser.add_argument(
        "--dataset",
        metavar="NAME",
        default="",
        help=f"dataset type + name: {DATASET_NAMES_HELP} (default: ImageFolder if empty)",
    )
    parser.add_argument("--split", metavar="NAME", default="validation", help="dataset split (default: validation)")
    parser.add_argument(
        "-j", "--workers", default=4, type=int, metavar="N", help="number of data loading workers (default: 4)"
    )
    parser.add_argument("-b", "--batch-size", default=256, type=int, metavar="N", help="mini-batch size (default: 256)")
    parser.add_argument(
        "--img-size", default=None, type=int, metavar="N", help="Input image dimension, uses model default if empty"
    )
    parser.add_argument(
        "--input-size",
        default=None,
        nargs=3,
        type=int,
        metavar="N",
        help="Input all image dimensions (d h w, e.g. --input-size 3 224 224), uses model default if empty",
    )
    parser.add_argument(
        "--use-train-size",
        action="store_true",
        default=False,
        help="force use of train input size, even when test size is specified in pretrained cfg",
    )
    parser.add_argument("--crop-pct", default=None, type=float, metavar="N", help="Input image center crop pct")
    parser.add_argument(
        "--crop-mode",
        default=None,
        type=str,
        metavar="N",
        help="Input image crop mode (squash, border, center). Model default if None.",
    )
    parser.add_argument("--crop-border-pixels", type=int, default=None, help="Crop pixels from image border.")
    parser.add_argument(
        "--mean", type=float, nargs="+", default=None, metavar="MEAN", help="Override mean pixel value of dataset"
    )
    parser.add_argument(
        "--std", type=float, nargs="+", default=None, metavar="STD", help="Override std deviation of of dataset"
    )
    parser.add_argument(
        "--interpolation",
        default="",
        type=str,
        metavar="NAME",
        help="Image resize interpolation type (overrides model)",
    )


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", "-m", metavar="NAME", default=DEFAULT_MODEL, help=f"model architecture (default: {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--pretrained",
        dest="pretrained",
        action="store_true",
        help="use pre-trained model (timm's Hub weights, through huggingface_hub's cache)",
    )
    parser.add_argument("--num-classes", type=int, default=None, help="Number classes in dataset")
    parser.add_argument(
        "--gp",
        default=None,
        type=str,
        metavar="POOL",
        help="Global pool type, one of (avg, max, avgmax, catavgmax). Model default if None.",
    )
    parser.add_argument(
        "--checkpoint",
        default="",
        type=str,
        metavar="PATH",
        help="path to latest checkpoint (.safetensors, .pth/.bin, or an mv2jax checkpoint directory) (default: none)",
    )
    parser.add_argument("--use-ema", dest="use_ema", action="store_true", help="use ema version of weights if present")
    parser.add_argument(
        "--amp",
        action="store_true",
        default=False,
        help="use mixed precision inference (float32 weights, --amp-dtype compute)",
    )
    parser.add_argument(
        "--amp-dtype",
        default="bfloat16",
        type=str,
        choices=tuple(AMP_DTYPES),
        help="lower precision AMP dtype (default: bfloat16, the TPU/XLA-native type; timm's default is float16)",
    )
    parser.add_argument(
        "--conv-impl",
        default="auto",
        choices=CONV_IMPLS,
        help="convolution implementation (default: auto, picked per backend)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="python -m mv2jax.validate", description="JAX ImageNet Validation")
    _add_data_args(parser)
    _add_model_args(parser)
    parser.add_argument("--log-freq", default=10, type=int, metavar="N", help="batch logging frequency (default: 10)")
    parser.add_argument(
        "--results-file",
        default="",
        type=str,
        metavar="FILENAME",
        help="Output csv file for validation results (summary)",
    )
    parser.add_argument(
        "--results-format",
        default=None,
        type=str,
        choices=RESULTS_FORMATS,
        help="Format for results file one of (csv, json) (default: json for a .json file, else csv)",
    )
    return parser


# --- model, data -----------------------------------------------------------------------------------------------


def load_model(args: argparse.Namespace) -> MobileNetV2:
    """The model in eval mode: --checkpoint loaded strictly (timm's `load_checkpoint`), else the Hub weights
    (fetched before the model is built for them, so that offline it fails at once). With --checkpoint, the
    Hub weights that timm would load first and then overwrite entirely are skipped."""
    kwargs = dict(
        num_classes=args.num_classes,
        global_pool=args.gp if args.gp is not None else "avg",
        dtype=AMP_DTYPES[args.amp_dtype] if args.amp else None,
        conv_impl=args.conv_impl,
    )
    model = create_model(args.model, **kwargs)
    if args.checkpoint:
        state_dict = read_checkpoint(args.checkpoint, use_ema=args.use_ema)
        _check_num_classes(state_dict, model, args)
        timm_to_mv2jax(state_dict, model, model_name=args.model)
    else:
        weights = _hub_weights(args.model, model.pretrained_cfg)
        model = create_model(args.model, pretrained=True, checkpoint_path=weights, **kwargs)
    return model.eval()


def _hub_weights(name: str, pretrained_cfg: dict) -> str:
    """Local path of the model's Hub weights (huggingface_hub's cache; downloaded if reachable)."""
    if not pretrained_cfg.get("hf_hub_id"):
        raise ValueError(f"{name} has no pretrained weights: pass --checkpoint PATH")
    try:
        return hub_weights(pretrained_cfg["hf_hub_id"])
    except OSError as e:
        raise OSError(f"{e} (for this command: --checkpoint FILE instead of --pretrained)") from e


def _check_num_classes(state_dict: dict, model: MobileNetV2, args: argparse.Namespace) -> None:
    """A checkpoint whose classifier has another class count: say which --num-classes fits."""
    weight = state_dict.get("classifier.weight")
    if args.num_classes is None and weight is not None and weight.shape[0] != model.num_classes:
        raise ValueError(
            f"{args.checkpoint} has a {weight.shape[0]}-class classifier, {args.model} has "
            f"{model.num_classes}: pass --num-classes {weight.shape[0]}"
        )


def param_count(model: nnx.Module) -> int:
    """Number of trainable parameters (timm's `sum(p.numel() for p in model.parameters())`, no BN buffers)."""
    return int(sum(np.size(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def resolve_eval_config(args: argparse.Namespace, model: MobileNetV2) -> dict[str, Any]:
    """timm's `resolve_data_config(vars(args), model=model, use_test_size=not args.use_train_size)`."""
    overrides = {
        k: getattr(args, k) for k in ("input_size", "img_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    }
    config = resolve_data_config(model, args=overrides, use_test_size=not args.use_train_size)
    if config["input_size"][0] != 3:
        raise ValueError(f"input size {config['input_size']}: mv2jax.validate reads RGB images (3 channels)")
    _logger.info("Data processing configuration for current model + dataset:")
    for key, value in config.items():
        _logger.info("\t%s: %s", key, value)
    return config


def build_eval_loader(args: argparse.Namespace, config: dict[str, Any], num_devices: int):
    """The dataset (timm's `create_dataset` naming) and its one-pass, padded grain eval loader. A batch larger
    than the dataset shrinks to it (rounded up to the device count), so a small set runs no idle padding."""
    if args.batch_size % num_devices:
        raise ValueError(f"--batch-size {args.batch_size} must be a multiple of the {num_devices} devices")
    dataset = create_dataset(args.dataset, root=args.data or args.data_dir, split=args.split)
    transform = create_transform(
        config["input_size"],
        is_training=False,
        interpolation=config["interpolation"],
        mean=config["mean"],
        std=config["std"],
        crop_pct=config["crop_pct"],
        crop_mode=config["crop_mode"],
        crop_border_pixels=args.crop_border_pixels,
    )
    batch_size = min(args.batch_size, -(-len(dataset) // num_devices) * num_devices)
    loader = create_loader(dataset, transform, batch_size=batch_size, is_training=False, num_workers=args.workers)
    return dataset, loader


# --- evaluation ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Per-example outputs in dataset order: `labels` int [N], `topk` int [N, k] (class ids, best first,
    k = min(5, num_classes)), `loss` float32 [N] (cross entropy of the logits)."""

    labels: np.ndarray
    topk: np.ndarray
    loss: np.ndarray

    def correct(self, k: int) -> np.ndarray:
        """bool [N]: the label is among the top min(k, num_classes) predictions."""
        return top_k_correct(self.topk, self.labels, k)


def make_predict_fn(model: MobileNetV2, mesh: jax.sharding.Mesh, image_shape: Sequence[int]) -> Callable:
    """Compile `batch -> {'topk': int32 [B, k], 'loss': f32 [B]}` for NHWC float32 images of `image_shape`
    ([B, H, W, C], B split over the mesh's `data` axis); weights replicated and bound in.

    Runs the BatchNorm-folded network (`fuse_for_inference`: the same logits to float32 rounding, ~2x faster on
    CPU), looping over small groups of images only on one device (a loop would cut across a sharded batch)."""
    net = fuse_for_inference(model, batch_chunk=None if mesh.devices.size == 1 else 0)
    params = jax.device_put(net.params, replicated(mesh))

    def predict(params, images, labels):
        logits = net.apply(params, images).astype(jnp.float32)
        loss = label_smoothing_cross_entropy(logits, labels, 0.0, reduction="none")
        return {"topk": top_k_classes(logits), "loss": loss}

    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    images = jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32, sharding=batch)
    labels = jax.ShapeDtypeStruct(tuple(image_shape[:1]), jnp.int32, sharding=batch)
    start = time.time()
    jitted = jax.jit(predict, out_shardings=replicated(mesh), compiler_options=net.compiler_options)
    compiled = jitted.lower(params, images, labels).compile()
    _logger.info(
        "Compiled the eval forward for %s on %d device(s) in %.1fs",
        tuple(image_shape),
        mesh.devices.size,
        time.time() - start,
    )
    return lambda b: compiled(params, b["image"], b["label"])


class _Meters:
    """timm's running AverageMeters over real (unmasked) examples, and its progress line."""

    def __init__(self, num_batches: int, log_freq: int):
        self.num_batches, self.log_freq = num_batches, max(1, log_freq)
        self.sums = {"loss": 0.0, "top1": 0, "top5": 0, "count": 0, "time": 0.0}
        self.end = time.time()

    def update(self, index: int, loss: np.ndarray, top1: np.ndarray, top5: np.ndarray, batch_size: int) -> None:
        now, n = time.time(), len(loss)
        val = {
            "time": now - self.end,
            "loss": float(np.sum(loss, dtype=np.float64)),
            "top1": int(top1.sum()),
            "top5": int(top5.sum()),
            "count": n,
        }
        self.end = now
        for key in self.sums:
            self.sums[key] += val[key]
        if index % self.log_freq == 0 or index == self.num_batches - 1:
            s, pct = self.sums, lambda c, d: 100.0 * c / max(d, 1)
            avg_time = s["time"] / (index + 1)
            _logger.info(
                f"Test: [{index:>4d}/{self.num_batches}]  Time: {val['time']:.3f}s ({avg_time:.3f}s, "
                f"{batch_size / max(avg_time, 1e-9):>7.2f}/s)  Loss: {val['loss'] / max(n, 1):>7.4f} "
                f"({s['loss'] / max(s['count'], 1):>6.4f})  Acc@1: {pct(val['top1'], n):>7.3f} "
                f"({pct(s['top1'], s['count']):>7.3f})  Acc@5: {pct(val['top5'], n):>7.3f} "
                f"({pct(s['top5'], s['count']):>7.3f})"
            )


def evaluate(
    predict: Callable, batches: Iterable[dict], mesh: jax.sharding.Mesh, num_batches: int, log_freq: int = 10
) -> Predictions:
    """Run `predict` over every batch (one batch in flight while the previous one's outputs are read) and
    gather the real examples' outputs in order. A corrupt image raises `UnreadableImageError` naming it."""
    meters = _Meters(num_batches, log_freq)
    labels, topk, losses = [], [], []

    def consume(index: int, batch: dict, out: dict) -> None:
        mask = np.asarray(batch["mask"])  # the global batch's mask: global outputs below are in the same order
        label, top, loss = (
            np.asarray(batch["label"])[mask],
            np.asarray(out["topk"])[mask],
            np.asarray(out["loss"])[mask],
        )
        labels.append(label)
        topk.append(top)
        losses.append(loss)
        meters.update(index, loss, top_k_correct(top, label, 1), top_k_correct(top, label, TOPK), len(mask))

    pending = None
    for index, local in enumerate(batches):
        batch = to_global_batch(local, mesh)
        out = predict(batch)
        if pending is not None:
            consume(*pending)
        pending = (index, _host_batch(batch, local), out)
    if pending is not None:
        consume(*pending)
    return Predictions(np.concatenate(labels), np.concatenate(topk), np.concatenate(losses))


def _host_batch(batch: dict[str, jax.Array], local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Labels and mask of the whole global batch on this host (one process: the local batch itself)."""
    if jax.process_count() == 1:
        return {"label": local["label"], "mask": local["mask"]}
    from jax.experimental import multihost_utils

    return {k: np.asarray(multihost_utils.process_allgather(batch[k], tiled=True)) for k in ("label", "mask")}


# --- the command -------------------------------------------------------------------------------------------------


def summarise(args: argparse.Namespace, preds: Predictions, num_params: int, config: dict[str, Any]) -> OrderedDict:
    """timm's result dict (model, top1, top1_err, top5, top5_err, param_count, img_size, crop_pct,
    interpolation; percentages rounded to 4 places, params in millions), then `loss` (mean cross entropy)
    and `count` (examples evaluated)."""
    count = len(preds.labels)
    top1 = 100.0 * int(preds.correct(1).sum()) / max(count, 1)
    top5 = 100.0 * int(preds.correct(TOPK).sum()) / max(count, 1)
    return OrderedDict(
        model=args.model,
        top1=round(top1, 4),
        top1_err=round(100 - top1, 4),
        top5=round(top5, 4),
        top5_err=round(100 - top5, 4),
        param_count=round(num_params / 1e6, 2),
        img_size=config["input_size"][-1],
        crop_pct=config["crop_pct"],
        interpolation=config["interpolation"],
        loss=float(np.mean(preds.loss, dtype=np.float64)) if count else float("nan"),
        count=count,
    )


def validate_with_predictions(args: argparse.Namespace) -> tuple[OrderedDict, Predictions]:
    """`validate`, also returning the per-example predictions."""
    # timm: "might as well try to validate something": no checkpoint means the pretrained weights
    args.pretrained = args.pretrained or not args.checkpoint
    model = load_model(args)
    num_params = param_count(model)
    _logger.info("Model %s created, param count: %d", args.model, num_params)
    config = resolve_eval_config(args, model)
    mesh = create_mesh()
    dataset, loader = build_eval_loader(args, config, mesh.devices.size)
    if dataset.num_classes > model.num_classes:  # timm fails at the first out-of-range label; say it up front
        raise ValueError(
            f"the dataset has {dataset.num_classes} classes, {args.model} has {model.num_classes} "
            "outputs: pass --num-classes (and weights) that cover its labels"
        )
    batch_size = loader.plan.global_batch_size
    _logger.info("Validating %d examples of %s in %d batches of %d", len(dataset), args.split, len(loader), batch_size)
    _, height, width = config["input_size"]
    # closing() stops grain's worker processes as soon as the pass ends or fails (not at interpreter exit)
    with contextlib.closing(iter(loader)) as batches:
        batches.start_prefetch()  # read the first batches while the forward compiles
        predict = make_predict_fn(model, mesh, (batch_size, height, width, 3))
        preds = evaluate(predict, batches, mesh, len(loader), args.log_freq)
    results = summarise(args, preds, num_params, config)
    _logger.info(
        " * Acc@1 %.3f (%.3f) Acc@5 %.3f (%.3f) Loss %.4f Count %d",
        results["top1"],
        results["top1_err"],
        results["top5"],
        results["top5_err"],
        results["loss"],
        results["count"],
    )
    return results, preds


def validate(args: argparse.Namespace) -> OrderedDict:
    """Evaluate `args.model` (parsed `build_parser()` arguments) on the dataset; returns the result dict."""
    return validate_with_predictions(args)[0]


def write_results(path: str, results: dict, fmt: str | None = None) -> None:
    """timm's `write_results`: one CSV row with a header, or indented JSON (`fmt` None picks by extension)."""
    fmt = fmt or ("json" if path.lower().endswith(".json") else "csv")
    with open(path, "w", newline="") as f:
        if fmt == "json":
            json.dump(results, f, indent=4)
        else:
            writer = csv.DictWriter(f, fieldnames=list(results))
            writer.writeheader()
            writer.writerow(results)


class _StderrHandler(logging.Handler):
    """Log messages as plain lines on the current `sys.stderr` (looked up per message, so redirection works)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: progress on stderr, `--result` + JSON on stdout (as timm); user errors as one line, exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not any(isinstance(h, _StderrHandler) for h in _logger.handlers):
        _logger.addHandler(_StderrHandler())
        _logger.setLevel(logging.INFO if jax.process_index() == 0 else logging.WARNING)
        _logger.propagate = False  # jax/absl may have configured the root logger: print each line once
    try:
        results = validate(args)
    except (OSError, ValueError) as e:  # unreadable image, missing files, unknown model, bad checkpoint, offline Hub
        message = " ".join(str(e).split())
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return 2
    if jax.process_index() == 0:
        if args.results_file:
            write_results(args.results_file, results, args.results_format)
        print(f"--result\n{json.dumps(results, indent=4)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
