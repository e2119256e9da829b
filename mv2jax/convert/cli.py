"""`python convert_weights.py`: parse the command line and call the converter. timm weights -> an mv2jax
checkpoint (`from_timm`), an mv2jax checkpoint -> timm weights (`to_timm`), and with `--verify` a check of the
result against the real timm package (`verify`).

Exit codes: 0 done (and verified), 1 verification failed, 2 bad input (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import mv2jax
from mv2jax.cli_parser import OneLineErrorParser
from mv2jax.convert.files import read_safetensors
from mv2jax.convert.from_timm import import_from_timm
from mv2jax.convert.to_timm import export_to_timm, load_mv2jax
from mv2jax.convert.verify import photo_path, verify

PROG = "convert_weights.py"
EXIT_OK, EXIT_VERIFY_FAILED, EXIT_BAD_INPUT = 0, 1, 2
# Caused by what the user passed (names, files, the Hub): reported in one line. Anything else is a bug and keeps
# its traceback. CheckpointMismatchError is a ValueError, FileNotFoundError and the Hub's errors are OSErrors.
USER_ERRORS = (ValueError, OSError, ImportError)
EXAMPLES = """examples:
  python convert_weights.py --model mobilenetv2_100.ra_in1k --output ckpt/mobilenetv2_100
  python convert_weights.py --model mobilenetv2_100 --checkpoint model.safetensors --output ckpt/m --verify
  python convert_weights.py --to-timm --input ckpt/m --output export/model.safetensors [--ema] --verify
"""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog=f"python {PROG}",
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
    parser.add_argument(
        "--model",
        "-m",
        metavar="NAME",
        help="model name as in timm (mobilenetv2_100.ra_in1k, hf-hub:timm/...); required to import; "
        "with --to-timm it defaults to the model_name in the checkpoint's meta",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="timm weights to import (.safetensors, or .pth/.bin/.pt with torch); default: the "
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
    parser.add_argument(
        "--use-ema",
        "--ema",
        dest="ema",
        action="store_true",
        help="take the EMA weights of a training checkpoint (timm's state_dict_ema, mv2jax's ema)",
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 verification failed, 2 bad input)."""
    args = build_parser().parse_args(argv)
    _quiet_orbax_restore()
    try:
        _check_args(args)
        image = photo_path(args.image) if args.verify else None
        if args.to_timm:
            model, output = export_to_timm(
                args.input, args.output, name=args.model, use_ema=args.ema, overwrite=args.overwrite
            )
        else:
            source_state_dict, output = import_from_timm(
                args.model,
                args.output,
                checkpoint=args.checkpoint,
                use_ema=args.ema,
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
    except USER_ERRORS as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT


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


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


# orbax warns for every item of a checkpoint restored without explicit arguments, as `read_orbax` does.
_ORBAX_NOISE = _DropMessage("was found in the checkpoint, but could not be restored")


def _quiet_orbax_restore() -> None:
    logger = logging.getLogger("absl")
    if _ORBAX_NOISE not in logger.filters:
        logger.addFilter(_ORBAX_NOISE)
