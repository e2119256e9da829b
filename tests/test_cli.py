"""Every command line shares one parser, one set of model-source flags, one `--conv-impl` and one error wrapper: a
bad command line is exactly one `PROG: error:` line and exit code 2 in each of them; `--use-ema` and its alias
`--ema` work wherever a model source is taken; `--conv-impl` accepts exactly the backend registry's names; user
errors and Ctrl-C become one line without a traceback."""

from __future__ import annotations

import faulthandler
import io
import runpy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mv2jax import benchmark, lowering, predict, validate
from mv2jax.bench import timm_train_compare
from mv2jax.cli import CliParser, cli_main
from mv2jax.convert import cli as convert_cli
from mv2jax.export import __main__ as export_cli
from mv2jax.models.backends import CONV_IMPLS
from mv2jax.train.config import parse_config

REPO = Path(__file__).resolve().parents[1]


def _script_main(name: str) -> Callable:
    """`main` of a top-level script (train.py, convert_weights.py), loaded without running it."""
    return runpy.run_path(str(REPO / name), run_name="not_main")["main"]


MAINS: dict[str, Callable] = {
    "train.py": lambda argv: _script_main("train.py")(argv),
    "convert_weights.py": lambda argv: _script_main("convert_weights.py")(argv),
    "mv2jax.validate": validate.main,
    "mv2jax.export": export_cli.main,
    "mv2jax.predict": predict.main,
    "mv2jax.lowering": lowering.main,
    "mv2jax.benchmark": benchmark.main,
    "mv2jax.bench.timm_train_compare": timm_train_compare.main,
}
# what each CLI requires, so that the flag under test is the only thing wrong
REQUIRED = {
    "convert_weights.py": ["--output", "out"],
    "mv2jax.export": ["--format", "onnx", "--output", "m.onnx"],
    "mv2jax.predict": ["photo.jpg"],
    "mv2jax.lowering": ["--out", "x.json"],
    "mv2jax.bench.timm_train_compare": ["--out", "out"],
}
# (CLI, arguments with one bad value): a value argparse rejects, or one only a later check rejects.
BAD_VALUES = [
    ("train.py", ["-b", "0"]),
    ("train.py", ["--conv-impl", "gpu"]),
    ("train.py", ["--epochs", "many"]),
    ("convert_weights.py", ["--model", "mobilenetv2_035", "--output"]),
    ("mv2jax.validate", ["--model", "mobilenetv2_035", "-b", "x"]),
    ("mv2jax.validate", ["--conv-impl", "gpu"]),
    ("mv2jax.export", ["--format", "onnx", "--output", "m.onnx", "--img-size", "x"]),
    ("mv2jax.predict", ["photo.jpg", "--img-size", "x"]),
    ("mv2jax.lowering", ["--out", "x.json", "--conv-impl", "auto"]),
    ("mv2jax.benchmark", ["--repeats", "x"]),
    ("mv2jax.bench.timm_train_compare", ["--out", "out", "--seeds", "x"]),
    ("mv2jax.bench.timm_train_compare", ["--out", "out", "--num-seeds", "0"]),
    ("mv2jax.bench.timm_train_compare", ["--out", "out", "--num-seeds", "2", "--seeds", "1"]),
]
MODEL_SOURCE_CLIS = {
    "mv2jax.validate": (validate.build_parser, []),
    "mv2jax.export": (export_cli.build_parser, REQUIRED["mv2jax.export"]),
    "mv2jax.predict": (predict.build_parser, REQUIRED["mv2jax.predict"]),
    "convert_weights.py": (convert_cli.build_parser, REQUIRED["convert_weights.py"]),
}


@pytest.fixture(autouse=True)
def _no_faulthandler(monkeypatch):
    """train.py's main registers a stack dump on stderr's file descriptor, which pytest's capture does not have."""
    monkeypatch.setattr(faulthandler, "register", lambda *args, **kwargs: None)


def _exit_and_stderr(capsys, prog: str, argv: list[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        MAINS[prog](argv)
    out, err = capsys.readouterr()
    assert out == "", out
    return e.value.code, err


@pytest.mark.parametrize("prog", list(MAINS))
def test_an_unknown_flag_is_one_line_and_exit_code_2_in_every_cli(prog, capsys):
    code, err = _exit_and_stderr(capsys, prog, [*REQUIRED.get(prog, []), "--no-such-flag"])
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: ") and err.endswith("(see --help)\n"), err
    assert "--no-such-flag" in err


@pytest.mark.parametrize("prog, argv", BAD_VALUES, ids=[f"{p} {' '.join(a)}" for p, a in BAD_VALUES])
def test_a_bad_value_is_one_line_and_exit_code_2_in_every_cli(prog, argv, capsys):
    code, err = _exit_and_stderr(capsys, prog, argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: ") and "usage:" not in err, err


def test_train_py_batch_size_0_from_the_shell_is_one_line_without_the_usage_text():
    done = subprocess.run(
        [sys.executable, "train.py", "-b", "0"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == ["train.py: error: --batch-size must be >= 1, got 0 (see --help)"]


@pytest.mark.parametrize("prog", list(MODEL_SOURCE_CLIS))
@pytest.mark.parametrize("spelling", ["--use-ema", "--ema"])
def test_every_cli_that_takes_a_model_source_takes_use_ema_and_its_alias_ema(prog, spelling):
    build_parser, required = MODEL_SOURCE_CLIS[prog]
    args = build_parser().parse_args([*required, "-m", "mobilenetv2_035", "--checkpoint", "ckpt", spelling])
    assert (args.model, args.checkpoint, args.use_ema) == ("mobilenetv2_035", "ckpt", True)
    assert build_parser().parse_args(required).use_ema is False


def test_model_source_flags_have_one_default_everywhere():
    for prog, (build_parser, required) in MODEL_SOURCE_CLIS.items():
        args = vars(build_parser().parse_args(required))
        assert (args["model"], args["checkpoint"], args.get("pretrained", False)) == (None, None, False), prog


def _conv_impl_parsers() -> dict[str, Callable[[list[str]], str]]:
    return {
        "train.py": lambda argv: parse_config(argv, out=io.StringIO()).conv_impl,
        "mv2jax.validate": lambda argv: validate.build_parser().parse_args(argv).conv_impl,
    }


@pytest.mark.parametrize("prog", ["train.py", "mv2jax.validate"])
def test_conv_impl_accepts_exactly_the_backend_registry(prog, capsys):
    parse = _conv_impl_parsers()[prog]
    for name in CONV_IMPLS:
        assert parse(["--conv-impl", name]) == name
    with pytest.raises(SystemExit) as e:
        parse(["--conv-impl", "gpu"])
    assert e.value.code == 2
    assert f"--conv-impl must be one of {', '.join(CONV_IMPLS)}, got 'gpu'" in capsys.readouterr().err


def test_lowering_takes_the_registry_backends_but_not_auto(capsys):
    with pytest.raises(SystemExit):
        lowering.main(["--out", "x.json", "--conv-impl", "auto"])
    backends = [name for name in CONV_IMPLS if name != "auto"]
    assert f"--conv-impl must be one of {', '.join(backends)}, got 'auto'" in capsys.readouterr().err


def test_a_conv_impl_from_a_yaml_config_is_checked_too(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text("conv_impl: gpu\n")
    with pytest.raises(SystemExit) as e:
        parse_config(["-c", str(path)], out=io.StringIO())
    assert e.value.code == 2 and "--conv-impl must be one of" in capsys.readouterr().err


def test_a_malformed_yaml_config_is_one_line(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text("batch_size: [1\n")
    with pytest.raises(SystemExit) as e:
        parse_config(["-c", str(path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "is not valid YAML" in err, err


@pytest.mark.parametrize(
    "error, code, line",
    [
        (ValueError("bad\n  value"), 2, "prog: error: bad value"),
        (FileNotFoundError("no such file"), 2, "prog: error: no such file"),
        (ImportError("needs the test extra"), 2, "prog: error: needs the test extra"),
        (KeyboardInterrupt(), 130, "prog: interrupted"),
    ],
)
def test_cli_main_turns_user_errors_and_ctrl_c_into_one_line(error, code, line, capsys):
    @cli_main("prog")
    def main() -> int:
        raise error

    assert main() == code
    out, err = capsys.readouterr()
    assert (out, err) == ("", line + "\n")


def test_cli_main_passes_exit_codes_through_and_keeps_tracebacks_of_bugs():
    assert cli_main("prog")(lambda: 1)() == 1
    with pytest.raises(KeyError):
        cli_main("prog")(lambda: {}["missing"])()


def test_the_usage_line_shows_how_the_command_is_run():
    assert CliParser("train.py").format_usage().startswith("usage: python train.py")
    assert CliParser("mv2jax.validate").format_usage().startswith("usage: python -m mv2jax.validate")


def test_the_cli_module_imports_no_jax():
    code = "import sys, mv2jax.cli, mv2jax.train.config\nassert 'jax' not in sys.modules, 'imported jax'\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
