"""`python -m mv2jax.export`: parse the command line and call the exporter.

Exit codes: 0 written (and verified), 1 verification failed, 2 bad input (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence

from mv2jax.cli import CliParser, add_model_source_args, check_img_size, cli_main
from mv2jax.convert.verify import photo_path
from mv2jax.export.artifact import FORMATS, export, get_format
from mv2jax.export.source import class_names, data_config, load_model, model_name

PROG = "mv2jax.export"
EXIT_OK, EXIT_VERIFY_FAILED = 0, 1
EXAMPLES = """examples:
  python -m mv2jax.export --model mobilenetv2_100.ra_in1k --pretrained --format onnx --output m.onnx --verify
  python -m mv2jax.export --checkpoint output/train/RUN/checkpoints/1000 --use-ema --format stablehlo --output m.shlo
"""


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        PROG,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a MobileNetV2 to ONNX or StableHLO (BatchNorm folded) or LiteRT (.tflite), with a JSON "
        "sidecar FILE.json holding its preprocessing (input size, layout, mean/std, crop_pct, interpolation: "
        "those it was trained with, for a train.py checkpoint), its class names and where its weights came from.",
    )
    add_model_source_args(p)
    p.add_argument("--format", required=True, metavar="FORMAT", help=f"one of {', '.join(FORMATS)}")
    p.add_argument("--output", "-o", required=True, metavar="FILE", help="the artifact to write (plus FILE.json)")
    p.add_argument(
        "--img-size",
        type=int,
        metavar="N",
        help="input height and width (default: the size a train.py checkpoint trained at, else the model's)",
    )
    p.add_argument("--batch-size", type=int, metavar="N", help="fix the batch size (default: any; tflite: 1)")
    p.add_argument(
        "--layout",
        choices=("nchw", "nhwc"),
        help="input layout: ONNX defaults to nchw, tflite to nhwc (the other adds one transpose at the input); "
        "StableHLO is nhwc",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing FILE (still atomically)")
    p.add_argument(
        "--verify",
        action="store_true",
        help="run the artifact in its runtime and compare its logits with timm's in float64 on random inputs and "
        "a photograph (needs timm and torch: pip install 'mv2jax[test]'); exit 1 on a mismatch",
    )
    p.add_argument("--image", metavar="PATH", help="photograph for --verify (default: scikit-learn's china.jpg)")
    return p


@cli_main(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 verification failed, 2 bad input)."""
    args = build_parser().parse_args(argv)
    get_format(args.format)  # before the (possibly slow) model load
    check_img_size(args.img_size)
    if args.verify and not all(importlib.util.find_spec(m) for m in ("timm", "torch")):
        raise ImportError("--verify needs timm and torch: pip install 'mv2jax[test]' (or export without --verify)")
    image = photo_path(args.image) if args.verify else None
    loaded = load_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint, use_ema=args.use_ema)
    model, meta = loaded.model, loaded.meta
    export(
        model,
        args.output,
        args.format,
        data_config(model, args.img_size, trained=meta.data_config),
        name=model_name(meta),
        source=meta.source,
        class_names=class_names(meta),
        batch_size=args.batch_size,
        layout=args.layout,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.output} and {args.output}.json")
    if not args.verify:
        return EXIT_OK
    from pathlib import Path

    from mv2jax.export.verify import verify_artifact

    return EXIT_OK if verify_artifact(model, Path(args.output), image) else EXIT_VERIFY_FAILED


if __name__ == "__main__":
    sys.exit(main())
