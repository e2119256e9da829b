"""Every train.py and validate argument is checked before any work: a bad image size, batch size, epoch count,
worker count, learning rate, crop or path is one `PROG: error:` line naming the flag and exit code 2, without the
usage text, without starting the training or loading a model, and without creating a run directory. Without a
dataset, train.py's flags change the demo run, and it says so in one line."""

from __future__ import annotations

import faulthandler
import runpy
from pathlib import Path

import pytest

import mv2jax.train.loop
from mv2jax import validate

REPO = Path(__file__).resolve().parents[1]
MISSING = "/no/such/path"

TRAIN_BAD = [
    (["--img-size", "-5"], "--img-size -5 is below MobileNetV2's minimum of 32"),
    (["--input-size", "3", "16", "16"], "--input-size 3 16 16: needs at least 1 channel and a height and width"),
    (["-b", "0"], "--batch-size must be >= 1, got 0"),
    (["-vb", "0"], "--validation-batch-size must be >= 1, got 0"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["-j", "-1"], "--workers must be >= 0, got -1"),
    (["--lr", "-0.1"], "--lr must be >= 0, got -0.1"),
    (["--warmup-lr=-1e-5"], "--warmup-lr must be >= 0"),
    (["--warmup-epochs", "-1"], "--warmup-epochs must be >= 0"),
    (["--decay-epochs", "0"], "--decay-epochs must be > 0"),
    (["--crop-pct", "0"], "--crop-pct must be > 0"),
    (["--smoothing", "1.5"], "--smoothing must be in [0, 1], got 1.5"),
    (["--scale", "0.9", "0.1"], "--scale takes two values LOW HIGH with LOW <= HIGH"),
    (["--num-classes", "0"], "--num-classes must be >= 1"),
    (["--data-dir", MISSING], f"--data-dir {MISSING}: no such file or directory"),
    (["--resume", MISSING], f"--resume {MISSING}: no such file or directory"),
    (["--initial-checkpoint", MISSING], f"--initial-checkpoint {MISSING}: no such file or directory"),
    (["--pretrained", "--pretrained-path", MISSING], f"--pretrained-path {MISSING}: no such file or directory"),
]
VALIDATE_BAD = [
    (["--img-size", "-5"], "--img-size -5 is below MobileNetV2's minimum of 32"),
    (["--input-size", "3", "224", "8"], "--input-size 3 224 8: needs at least 1 channel and a height and width"),
    (["-b", "0"], "--batch-size must be >= 1, got 0"),
    (["-j", "-2"], "--workers must be >= 0, got -2"),
    (["--crop-pct", "-1"], "--crop-pct must be > 0"),
    (["--num-classes", "0"], "--num-classes must be >= 1"),
    (["--data-dir", MISSING], f"--data-dir {MISSING}: no such file or directory"),
    ([MISSING], f"--data-dir {MISSING}: no such file or directory"),
    (["--checkpoint", MISSING], f"--checkpoint {MISSING}: no such file or directory"),
]


@pytest.fixture
def no_work(monkeypatch):
    """Training and model loading fail the test if reached: every check must come before them."""

    def reached(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(mv2jax.train.loop, "train", reached)
    monkeypatch.setattr(validate, "load_source", reached)
    # train.py's main registers a stack dump on stderr's file descriptor, which pytest's capture does not have
    monkeypatch.setattr(faulthandler, "register", lambda *args, **kwargs: None)


def _exit_code(main, argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse-level checks exit through the parser
        return e.code


def _one_error_line(capsys, prog: str, main, argv: list[str]) -> tuple[str, str]:
    code = _exit_code(main, argv)
    out, err = capsys.readouterr()
    assert code == 2, (argv, out, err)
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: "), err
    assert "usage:" not in err and "Traceback" not in err
    return out, err


@pytest.mark.parametrize("argv, message", TRAIN_BAD, ids=[" ".join(a) for a, _ in TRAIN_BAD])
def test_each_bad_train_argument_is_one_line_exit_2_before_any_work_and_no_run_directory(
    argv, message, tmp_path, capsys, no_work
):
    main = runpy.run_path(str(REPO / "train.py"), run_name="not_main")["main"]
    output = tmp_path / "out"
    for dataset in ([], ["--dataset", "digits"]):  # the demo run and a run on a dataset
        out, err = _one_error_line(capsys, "train.py", main, [*dataset, *argv, "--output", str(output)])
        assert message in err, err
        assert out in ("",) or out.startswith("no dataset given"), out
        assert not output.exists()


@pytest.mark.parametrize("argv, message", VALIDATE_BAD, ids=[" ".join(a) for a, _ in VALIDATE_BAD])
def test_each_bad_validate_argument_is_one_line_exit_2_before_any_work(argv, message, capsys, no_work):
    out, err = _one_error_line(capsys, "mv2jax.validate", validate.main, ["--dataset", "digits", *argv])
    assert message in err and out == "", err


def test_the_demo_run_with_flags_says_so_in_one_line(capsys, no_work):
    main = runpy.run_path(str(REPO / "train.py"), run_name="not_main")["main"]
    out, err = _one_error_line(capsys, "train.py", main, ["--epochs", "30", "--resume", MISSING])
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("no dataset given (--data-dir, --dataset): quick demo run (")
    assert "--model mobilenetv2_035 --dataset digits" in lines[0]
    assert lines[0].endswith(f") with --epochs 30 --resume {MISSING}")
