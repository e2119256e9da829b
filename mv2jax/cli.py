"""What every mv2jax command line shares: the parser (a bad command line is one line), the model-source flags, the
`--conv-impl` flag, and `cli_main`, which turns a user's mistake into one line and exit code 2.

Importing this module imports no JAX (train.py's `--help` needs none); the backend registry is read only when a
`--conv-impl` value is checked.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

from mv2jax.signals import ForwardToMain, tolerate_closed_pipes

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
EXIT_DOES_NOT_FIT = 3  # train.py --compile-only: a step needs more memory than the target chip has
# Caused by what the user passed (names, files, flags, the Hub, a missing extra): one line, no traceback. Anything
# else is a bug and keeps its traceback. CheckpointMismatchError and train's ConfigError are ValueErrors;
# FileNotFoundError and huggingface_hub's errors are OSErrors.
USER_ERRORS = (ValueError, OSError, ImportError)

Main = Callable[..., int]


def one_line(message: object) -> str:
    """`message` with every run of whitespace (newlines included) as one space."""
    return " ".join(str(message).split())


class CliParser(argparse.ArgumentParser):
    """The parser of every mv2jax command line. `prog` is the command's name in its messages (`train.py`,
    `mv2jax.validate`); the usage line shows how it is run (`python train.py`, `python -m mv2jax.validate`). An
    error (unknown flag, missing or malformed value) prints one line, `PROG: error: MESSAGE (see --help)`, and
    exits with code 2, instead of the whole usage text followed by the error."""

    def __init__(self, prog: str, **kwargs) -> None:
        self.name = prog
        invocation = f"python {prog}" if prog.endswith(".py") else f"python -m {prog}"
        super().__init__(prog=invocation, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.name}: error: {one_line(message)} (see --help)\n")


def cli_main(prog: str) -> Callable[[Main], Main]:
    """Decorates a command line's `main(argv) -> exit code`: a user error (`USER_ERRORS`) becomes one line,
    `PROG: error: MESSAGE`, on stderr and exit code 2; Ctrl-C becomes `PROG: interrupted` and exit code 130. Both
    without a traceback. The exit codes `main` returns itself (e.g. 1, a failed verification) pass through.
    While `main` runs, SIGINT is blocked in every thread and process it starts and raised in the main thread only
    (`mv2jax.signals.ForwardToMain`: its data-loading workers never see the terminal's Ctrl-C), and a closed stdout
    or stderr pipe swallows writes instead of failing (`tolerate_closed_pipes`)."""

    def decorate(main: Main) -> Main:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            with tolerate_closed_pipes():
                try:
                    with ForwardToMain([signal.SIGINT]):  # data-loading workers never see a Ctrl-C
                        return main(*args, **kwargs)
                except USER_ERRORS as e:
                    print(f"{prog}: error: {one_line(e) or type(e).__name__}", file=sys.stderr, flush=True)
                    return EXIT_BAD_INPUT
                except KeyboardInterrupt:
                    print(f"{prog}: interrupted", file=sys.stderr, flush=True)
                    return EXIT_INTERRUPTED

        return run

    return decorate


# --- flags shared by several command lines -----------------------------------------------------------------------

MODEL_HELP = (
    "model name as in timm (mobilenetv2_100, mobilenetv2_100.ra_in1k, hf-hub:timm/...); an mv2jax checkpoint "
    "directory records its own"
)
PRETRAINED_HELP = "timm's Hub weights for --model (through huggingface_hub's cache)"
CHECKPOINT_HELP = (
    "weights to load: a timm file (.safetensors; .pth/.bin/.pt with torch) or an mv2jax checkpoint directory "
    "(a train.py step, or convert_weights.py's output)"
)
EMA_HELP = "the checkpoint's EMA weights (timm's state_dict_ema, train.py's EMA)"


def add_model_source_args(
    parser: argparse.ArgumentParser,
    *,
    model_default: str | None = None,
    model_help: str = MODEL_HELP,
    pretrained: bool = True,
    checkpoint_help: str = CHECKPOINT_HELP,
) -> None:
    """`--model/-m NAME`, `--pretrained` (unless `pretrained=False`), `--checkpoint PATH` and `--use-ema` (alias
    `--ema`), with dests `model`, `pretrained`, `checkpoint`, `use_ema`: where a command line's model comes from.
    Without `model_default`, --model is None unless given (the checkpoint's recorded model is used)."""
    default = f" (default: {model_default})" if model_default else ""
    parser.add_argument("--model", "-m", metavar="NAME", default=model_default, help=model_help + default)
    if pretrained:
        parser.add_argument("--pretrained", action="store_true", help=PRETRAINED_HELP)
    parser.add_argument("--checkpoint", metavar="PATH", help=checkpoint_help)
    parser.add_argument("--use-ema", "--ema", dest="use_ema", action="store_true", help=EMA_HELP)


def add_data_config_args(parser: argparse.ArgumentParser) -> None:
    """timm's data-config overrides, with timm's names, dests and help text: `--img-size`, `--input-size`,
    `--crop-pct`, `--crop-mode`, `--mean`, `--std`, `--interpolation` (the keys `resolve_data_config` reads)."""
    add = parser.add_argument
    add("--img-size", type=int, metavar="N", help="Input image dimension, uses model default if empty")
    add(
        "--input-size",
        nargs=3,
        type=int,
        metavar="N",
        help="Input all image dimensions (d h w, e.g. --input-size 3 224 224), uses model default if empty",
    )
    add("--crop-pct", type=float, metavar="N", help="Input image center crop pct")
    add("--crop-mode", metavar="N", help="Input image crop mode (squash, border, center). Model default if None.")
    add("--mean", type=float, nargs="+", metavar="MEAN", help="Override mean pixel value of dataset")
    add("--std", type=float, nargs="+", metavar="STD", help="Override std deviation of of dataset")
    add("--interpolation", default="", metavar="NAME", help="Image resize interpolation type (overrides model)")


def check_minimum(flag: str, value: float | None, minimum: float) -> None:
    """ValueError unless `value` (the value of `flag`) is None or at least `minimum`."""
    if value is not None and value < minimum:
        raise ValueError(f"{flag} must be >= {minimum}, got {value}")


def check_exists(flag: str, path: str | None) -> None:
    """FileNotFoundError naming `flag` unless `path` is empty or exists (a file or a directory)."""
    if path and not os.path.exists(path):
        raise FileNotFoundError(f"{flag} {path}: no such file or directory")


MIN_IMG_SIZE = 32  # MobileNetV2's output stride: a smaller image leaves its last stage without a pixel


def check_img_size(img_size: int | None) -> None:
    """ValueError unless `img_size` (the `--img-size` value) is None or at least `MIN_IMG_SIZE`."""
    if img_size is not None and img_size < MIN_IMG_SIZE:
        raise ValueError(f"--img-size {img_size} is below MobileNetV2's minimum of {MIN_IMG_SIZE} (its output stride)")


def check_data_config_args(args: object) -> None:
    """timm's data-config sizes (`--img-size`, `--input-size`, `--crop-pct`) on `args`, an argparse namespace or a
    config object, checked before any work: ValueError naming the flag. Absent or None values are not checked."""
    check_img_size(getattr(args, "img_size", None))
    input_size = getattr(args, "input_size", None)
    if input_size is not None:
        if len(input_size) != 3:
            raise ValueError(f"--input-size takes 3 values C H W (e.g. 3 224 224), got {len(input_size)}")
        chans, height, width = input_size
        if chans < 1 or min(height, width) < MIN_IMG_SIZE:
            raise ValueError(
                f"--input-size {chans} {height} {width}: needs at least 1 channel and a height and width of at least "
                f"{MIN_IMG_SIZE} (MobileNetV2's output stride)"
            )
    crop_pct = getattr(args, "crop_pct", None)
    if crop_pct is not None and not crop_pct > 0:
        raise ValueError(f"--crop-pct must be > 0 (e.g. 0.875), got {crop_pct}")


CONV_IMPL_HELP = (
    "the network's backend: xla (lax convolutions and autodiff: GPU/TPU), cpu (the XLA:CPU fast path)"
    ", or auto (cpu when JAX's default backend is the CPU, else xla)"
)


def conv_impl_choices(auto: bool = True) -> tuple[str, ...]:
    """The backend registry's names, with 'auto' first unless `auto=False`. Imports JAX."""
    from mv2jax.models.backends import CONV_IMPLS

    return tuple(c for c in CONV_IMPLS if auto or c != "auto")


def check_conv_impl(value: str, auto: bool = True) -> str:
    """`value` if it names a backend (or is 'auto', unless `auto=False`); else ValueError naming the choices."""
    choices = conv_impl_choices(auto)
    if value not in choices:
        raise ValueError(f"--conv-impl must be one of {', '.join(choices)}, got {value!r}")
    return value


class _ConvImplAction(argparse.Action):
    """Stores a `--conv-impl` value checked against the registry when given (so `--help` imports no JAX)."""

    def __init__(self, *args, auto: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.auto = auto

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        try:
            setattr(namespace, self.dest, check_conv_impl(value, self.auto))
        except ValueError as e:
            parser.error(str(e))


def add_conv_impl_arg(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    default: str = "auto",
    auto: bool = True,
    help: str = CONV_IMPL_HELP,
) -> None:
    """`--conv-impl IMPL` (dest `conv_impl`): a name from `mv2jax.models.backends`, or 'auto' unless `auto=False`."""
    parser.add_argument(
        "--conv-impl",
        dest="conv_impl",
        default=default,
        metavar="IMPL",
        action=_ConvImplAction,
        auto=auto,
        help=f"{help} (default: {default})",
    )
