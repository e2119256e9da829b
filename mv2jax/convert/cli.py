"""`python convert_weights.py`: parse the command line and call the converter. timm weights -> an mv2jax
checkpoint (`from_timm`), an mv2jax checkpoint -> timm weights (`to_timm`), and with `--verify` a check of the
result against the real timm package (`verify`).

Exit codes: 0 done (and verified), 1 verification failed, 2 bad input (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import mv2jax
from mv2jax.cli import CliParser, add_model_source_args, cli_main
from mv2jax.convert.from_timm import import_from_timm
from mv2jax.convert.to_timm import export_to_timm, load_mv2jax
from mv2jax.convert.verify import photo_path, verify
from mv2jax.weights import read_safetensors

PROG = "convert_weights.py"
EXIT_OK, EXIT_VERIFY_FAILED = 0, 1
EXAMPLES = """examples:
  python convert_weights.py --model mobilenetv2_100.ra_in1k --output ckpt/mobilenetv2_100
  python convert_weights.py --model mobilenetv2_100 --checkpoint model.safetensors --output ckpt/m --verify
  python convert_weights.py --to-timm --input ckpt/m --output export/model.safetensors [--ema] --verify
"""


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        PROG,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert timm MobileNetV2 weights to an mv2jax (orbax) checkpoint, or back with --to-timm.",
    )
    parser.add_argument(
        "--to-timm",
        action="store_true",
        help="export an mv2jax checkpoint (--input) to a timm safetensors file plus config.json "
        "(default: import timm weights into an mv2jax checkpoint)",
    )
    add_model_source_args(
        parser,
        model_help="model name as in timm (mobilenetv2_100.ra_in1k, hf-hub:timm/...); required to import; "
        "with --to-timm it defaults to the model_name in the checkpoint's meta",
        pretrained=False,  # importing without --checkpoint takes the Hub weights
        checkpoint_help="timm weights to import (.safetensors, or .pth/.bin/.pt with torch); default: the "
        "tag's Hub weights through huggingface_hub's cache",
    )
    parser.add_argument(
        "--input",
        metavar="DIR_OR_FILE",
        help="with --to-timm: the mv2jax checkpoint directory (or a timm file, with --model)",
    )
    parser.add_argument(
        "--output",
        "-o",
        required=True,
        metavar="PATH",
        help="import: the mv2jax checkpoint directory to create; --to-timm: the .safetensors file "
        "(name it model.safetensors to make its directory a loadable Hub-style repo)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (still atomically)")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check the result against timm built from the same weights: tensors bit for bit, "
        "logits on random inputs and a photograph (needs the test extra, timm + torch: "
        "pip install 'mv2jax[test]'); exit 1 if they differ",
    )
    parser.add_argument(
        "--image",
        metavar="PATH",
        help="photograph for --verify (default: scikit-learn's sklearn/datasets/images/china.jpg)",
    )
    return parser


@cli_main(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 verification failed, 2 bad input)."""
    args = build_parser().parse_args(argv)
    _check_args(args)
    image = photo_path(args.image) if args.verify else None
    if args.to_timm:
        model, output = export_to_timm(
            args.input, args.output, name=args.model, use_ema=args.use_ema, overwrite=args.overwrite
        )
    else:
        source_state_dict, output = import_from_timm(
            args.model,
            args.output,
            checkpoint=args.checkpoint,
            use_ema=args.use_ema,
            overwrite=args.overwrite,
            converted_by=f"mv2jax {mv2jax.__version__} {PROG}",
        )
    print(f"wrote {output}")
    if not args.verify:
        return EXIT_OK
    # check what was written, read back as its users will read it
    if args.to_timm:
        ok = verify(model, read_safetensors(output), image)
    else:
        ok = verify(load_mv2jax(output)[0], source_state_dict, image)
    return EXIT_OK if ok else EXIT_VERIFY_FAILED


def _check_args(args: argparse.Namespace) -> None:
    if args.to_timm:
        if not args.input:
            raise ValueError("--to-timm needs --input (an mv2jax checkpoint directory)")
        if args.checkpoint:
            raise ValueError("--checkpoint is for importing timm weights; with --to-timm pass --input")
        if Path(args.output).suffix != ".safetensors":
            raise ValueError(f"--output {args.output} must be a .safetensors file with --to-timm")
    else:
        if not args.model:
            raise ValueError("--model is required to import timm weights (e.g. --model mobilenetv2_100.ra_in1k)")
        if args.input:
            raise ValueError("--input is for --to-timm; to import timm weights pass --checkpoint FILE")
    if args.verify and not all(importlib.util.find_spec(m) for m in ("timm", "torch")):
        raise ImportError("--verify needs timm and torch (the test extra): pip install 'mv2jax[test]'")
