"""`python -m mv2jax.validate`: top-1 / top-5 accuracy and cross-entropy of a model's weights on a dataset, as
timm's validate.py computes them (same flags, same preprocessing, same result dict).

    python -m mv2jax.validate --model mobilenetv2_100 --checkpoint model.safetensors --data-dir /imagenet

The model is an mv2jax NNX model (timm weights: --pretrained from the Hub cache, or --checkpoint FILE/DIR). The
eval transform is resolved from the model's pretrained_cfg plus the overrides exactly as timm's
`resolve_data_config`; the grain eval loader visits every example exactly once (the last batch is padded and the
padding masked out), and one jitted forward runs over a device mesh with the batch split on its `data` axis.
Loss and top-1 / top-5 counts are `mv2jax.metrics`' sums over each batch's real examples, as in train.py's eval,
added up on the host; the per-example top-k classes and losses are kept beside them.
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mv2jax.cli import (
    CliParser,
    add_conv_impl_arg,
    add_data_config_args,
    add_model_source_args,
    check_data_config_args,
    check_exists,
    check_minimum,
    cli_main,
)
from mv2jax.data import (
    create_dataset,
    create_eval_transform,
    create_loader,
    resolve_data_config,
    to_global_batch,
    with_trained_config,
)
from mv2jax.data.datasets import DATASET_NAMES_HELP
from mv2jax.mesh import batch_sharding, create_mesh, replicated
from mv2jax.metrics import averages, example_metrics, masked_sums, top_k_correct
from mv2jax.models import LoadedModel, MobileNetV2, fuse_for_inference
from mv2jax.models import load_model as load_source

_logger = logging.getLogger("validate")

PROG = "mv2jax.validate"
AMP_DTYPES = {"float16": jnp.float16, "bfloat16": jnp.bfloat16}
RESULTS_FORMATS = ("csv", "json")


# --- command line (timm's validate.py flag names and help text) ---------------------------------------------------


def _add_dataset_args(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("data", nargs="?", metavar="DIR", help="path to dataset (*deprecated*, use --data-dir)")
    add("--data-dir", metavar="DIR", help="path to dataset (root dir)")
    add("--dataset", metavar="NAME", default="", help=f"dataset type + name: {DATASET_NAMES_HELP} (default: folder)")
    add("--split", metavar="NAME", default="validation", help="dataset split (default: validation)")
    add("-j", "--workers", default=4, type=int, metavar="N", help="number of data loading workers (default: 4)")
    add("-b", "--batch-size", default=256, type=int, metavar="N", help="mini-batch size (default: 256)")


def _add_preprocessing_args(parser: argparse.ArgumentParser) -> None:
    add_data_config_args(parser)
    parser.add_argument(
        "--use-train-size",
        action="store_true",
        help="force use of train input size, even when test size is specified in pretrained cfg",
    )
    parser.add_argument("--crop-border-pixels", type=int, help="Crop pixels from image border.")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    add_model_source_args(parser)
    add = parser.add_argument
    add("--num-classes", type=int, help="Number classes in dataset")
    add("--gp", metavar="POOL", help="Global pool type, one of (avg, max, avgmax, catavgmax). Model default if None.")
    add("--amp", action="store_true", help="use mixed precision inference (float32 weights, --amp-dtype compute)")
    add(
        "--amp-dtype",
        default="bfloat16",
        choices=tuple(AMP_DTYPES),
        help="lower precision AMP dtype (default: bfloat16, the TPU/XLA-native type; timm's default is float16)",
    )
    add_conv_impl_arg(parser)


def _add_output_args(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--log-freq", default=10, type=int, metavar="N", help="batch logging frequency (default: 10)")
    add("--results-file", default="", metavar="FILENAME", help="Output csv file for validation results (summary)")
    add(
        "--results-format",
        choices=RESULTS_FORMATS,
        help="Format for results file one of (csv, json) (default: json for a .json file, else csv)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(PROG, description="JAX ImageNet Validation")
    for add_args in (_add_dataset_args, _add_preprocessing_args, _add_model_args, _add_output_args):
        add_args(parser)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Every value checked before any work (ValueError/FileNotFoundError naming the flag: one line, exit 2)."""
    check_minimum("--batch-size", args.batch_size, 1)
    check_minimum("--workers", args.workers, 0)
    check_minimum("--num-classes", args.num_classes, 1)
    check_minimum("--log-freq", args.log_freq, 1)
    check_minimum("--crop-border-pixels", args.crop_border_pixels, 0)
    check_data_config_args(args)
    if args.data and args.data_dir and args.data != args.data_dir:
        raise ValueError(f"dataset path given twice: positional {args.data!r} and --data-dir {args.data_dir!r}")
    check_exists("--data-dir", args.data or args.data_dir)
    check_exists("--checkpoint", args.checkpoint)


# --- model, data -----------------------------------------------------------------------------------------------


def load_model(args: argparse.Namespace) -> LoadedModel:
    """The model (in eval mode) and its metadata: --checkpoint loaded strictly (timm's `load_checkpoint`; an mv2jax
    checkpoint directory names its own model, --model overrides it), else --model's Hub weights (fetched before
    the model is built, so that offline it fails at once)."""
    loaded = load_source(
        args.model,
        pretrained=not args.checkpoint,  # timm: "might as well try to validate something"
        checkpoint_path=args.checkpoint or None,
        use_ema=args.use_ema,
        num_classes=args.num_classes,
        global_pool=args.gp,
        dtype=AMP_DTYPES[args.amp_dtype] if args.amp else None,
        conv_impl=args.conv_impl,
    )
    loaded.model.eval()
    return loaded


def param_count(model: nnx.Module) -> int:
    """Number of trainable parameters (timm's `sum(p.numel() for p in model.parameters())`, no BN buffers)."""
    return int(sum(np.size(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def resolve_eval_config(
    args: argparse.Namespace, model: MobileNetV2, trained: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """timm's `resolve_data_config(vars(args), model=model, use_test_size=not args.use_train_size)`, from the data
    config the model was `trained` with (a train.py checkpoint's) where there is one: the flags override it."""
    overrides = {
        k: getattr(args, k) for k in ("input_size", "img_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    }
    cfg = with_trained_config(model.pretrained_cfg, trained)
    config = resolve_data_config(model, pretrained_cfg=cfg, args=overrides, use_test_size=not args.use_train_size)
    if config["input_size"][0] != 3:
        raise ValueError(f"input size {config['input_size']}: mv2jax.validate reads RGB images (3 channels)")
    _logger.info("Data processing configuration for current model + dataset:")
    for key, value in config.items():
        _logger.info("\t%s: %s", key, value)
    return config


def build_eval_loader(
    args: argparse.Namespace, config: dict[str, Any], num_devices: int, class_names: Sequence[str] | None = None
):
    """The dataset (timm's `create_dataset` naming) and its one-pass, padded grain eval loader. An ImageFolder's
    folders are matched by name to the model's `class_names` where it records them. A batch larger than the
    dataset shrinks to it (rounded up to the device count), so a small set runs no idle padding."""
    if args.batch_size % num_devices:
        raise ValueError(f"--batch-size {args.batch_size} must be a multiple of the {num_devices} devices")
    root, classes = args.data or args.data_dir, dict(class_names=class_names, classes_of="the model's classes")
    dataset = create_dataset(args.dataset, root=root, split=args.split, **classes)
    transform = create_eval_transform(config, crop_border_pixels=args.crop_border_pixels)
    batch_size = min(args.batch_size, -(-len(dataset) // num_devices) * num_devices)
    loader = create_loader(dataset, transform, batch_size=batch_size, is_training=False, num_workers=args.workers)
    return dataset, loader


# --- evaluation ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Per-example outputs in dataset order: `labels` int [N], `topk` int [N, k] (class ids, best first,
    k = min(5, num_classes)), `loss` float32 [N] (cross entropy of the logits); and `totals`, every batch's
    `mv2jax.metrics.masked_sums` added up (`loss_sum`, `top1`, `top5`, `count`: what the result reports)."""

    labels: np.ndarray
    topk: np.ndarray
    loss: np.ndarray
    totals: dict[str, float]

    def correct(self, k: int) -> np.ndarray:
        """bool [N]: the label is among the top min(k, num_classes) predictions."""
        return top_k_correct(self.topk, self.labels, k)


def make_predict_fn(model: MobileNetV2, mesh: jax.sharding.Mesh, image_shape: Sequence[int]) -> Callable:
    """Compile `batch -> outputs` for NHWC float32 images of `image_shape` ([B, H, W, C], B split over the mesh's
    `data` axis), int32 labels and a bool mask; weights replicated and bound in. The outputs are
    `mv2jax.metrics.example_metrics` (`topk` int32 [B, k], `loss` f32 [B]) and its `masked_sums` over the batch.

    Runs the BatchNorm-folded network (`fuse_for_inference`: the same logits to float32 rounding, faster on
    CPU), looping over small groups of images only on one device (a loop would cut across a sharded batch)."""
    net = fuse_for_inference(model, devices=mesh.devices.size)
    params = jax.device_put(net.params, replicated(mesh))

    def predict(params, images, labels, mask):
        example = example_metrics(net.apply(params, images), labels)
        return {**example, **masked_sums(example, labels, mask)}

    batch = batch_sharding(mesh)
    images = jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32, sharding=batch)
    labels = jax.ShapeDtypeStruct(tuple(image_shape[:1]), jnp.int32, sharding=batch)
    mask = jax.ShapeDtypeStruct(tuple(image_shape[:1]), jnp.bool_, sharding=batch)
    start = time.time()
    jitted = jax.jit(predict, out_shardings=replicated(mesh), compiler_options=net.compiler_options)
    compiled = jitted.lower(params, images, labels, mask).compile()
    _logger.info(
        "Compiled the eval forward for %s on %d device(s) in %.1fs",
        tuple(image_shape),
        mesh.devices.size,
        time.time() - start,
    )
    return lambda b: compiled(params, b["image"], b["label"], b["mask"])


class _Meters:
    """timm's running AverageMeters over real (unmasked) examples, and its progress line."""

    def __init__(self, num_batches: int, log_freq: int):
        self.num_batches, self.log_freq = num_batches, max(1, log_freq)
        self.totals: dict[str, float] = {"loss_sum": 0.0, "top1": 0, "top5": 0, "count": 0}
        self.time, self.end = 0.0, time.time()

    def update(self, index: int, sums: dict[str, Any], batch_size: int) -> None:
        """Add one batch's `mv2jax.metrics.masked_sums` (the loss in float64, counts as integers)."""
        now = time.time()
        seconds, self.end = now - self.end, now
        self.time += seconds
        val = {"loss_sum": float(sums["loss_sum"]), **{k: int(sums[k]) for k in ("top1", "top5", "count")}}
        for key in self.totals:
            self.totals[key] += val[key]
        if index % self.log_freq == 0 or index == self.num_batches - 1:
            now_avg, run_avg, avg_time = averages(val), averages(self.totals), self.time / (index + 1)
            _logger.info(
                f"Test: [{index:>4d}/{self.num_batches}]  Time: {seconds:.3f}s ({avg_time:.3f}s, "
                f"{batch_size / max(avg_time, 1e-9):>7.2f}/s)  Loss: {now_avg['loss']:>7.4f} "
                f"({run_avg['loss']:>6.4f})  Acc@1: {now_avg['top1']:>7.3f} ({run_avg['top1']:>7.3f})  "
                f"Acc@5: {now_avg['top5']:>7.3f} ({run_avg['top5']:>7.3f})"
            )


def evaluate(
    predict: Callable, batches: Iterable[dict], mesh: jax.sharding.Mesh, num_batches: int, log_freq: int = 10
) -> Predictions:
    """Run `predict` over every batch (one batch in flight while the previous one's outputs are read) and
    gather the real examples' outputs in order, with the batches' sums added up. A corrupt image raises
    `UnreadableImageError` naming it."""
    meters = _Meters(num_batches, log_freq)
    labels, topk, losses = [], [], []

    def consume(index: int, batch: dict, out: dict) -> None:
        mask = np.asarray(batch["mask"])  # the global batch's mask: global outputs below are in the same order
        labels.append(np.asarray(batch["label"])[mask])
        topk.append(np.asarray(out["topk"])[mask])
        losses.append(np.asarray(out["loss"])[mask])
        meters.update(index, out, len(mask))

    pending = None
    for index, local in enumerate(batches):
        batch = to_global_batch(local, mesh)
        out = predict(batch)
        if pending is not None:
            consume(*pending)
        pending = (index, _host_batch(batch, local), out)
    if pending is not None:
        consume(*pending)
    return Predictions(np.concatenate(labels), np.concatenate(topk), np.concatenate(losses), dict(meters.totals))


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
    means = averages(preds.totals)
    top1, top5 = means["top1"], means["top5"]
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
        loss=means["loss"],
        count=int(preds.totals["count"]),
    )


def validate_with_predictions(args: argparse.Namespace) -> tuple[OrderedDict, Predictions]:
    """`validate`, also returning the per-example predictions."""
    loaded = load_model(args)
    model, args.model = loaded.model, loaded.meta.name  # a checkpoint directory names its own model
    num_params = param_count(model)
    _logger.info("Model %s created, param count: %d", args.model, num_params)
    config = resolve_eval_config(args, model, loaded.meta.data_config)
    mesh = create_mesh()
    dataset, loader = build_eval_loader(args, config, mesh.devices.size, loaded.meta.class_names)
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


@cli_main(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: progress on stderr, `--result` + JSON on stdout (as timm); user errors as one line, exit 2."""
    args = build_parser().parse_args(argv)
    check_args(args)
    if not any(isinstance(h, _StderrHandler) for h in _logger.handlers):
        _logger.addHandler(_StderrHandler())
        _logger.setLevel(logging.INFO if jax.process_index() == 0 else logging.WARNING)
        _logger.propagate = False  # jax/absl may have configured the root logger: print each line once
    results = validate(args)
    if jax.process_index() == 0:
        if args.results_file:
            write_results(args.results_file, results, args.results_format)
        print(f"--result\n{json.dumps(results, indent=4)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
