"""train.py's command line: timm's flag names and defaults, JAX-meaningless flags, errors, YAML config files."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mv2jax.train.config import JAX_MAPPED, QUICK_RUN, TrainConfig, config_from_dict, parse_config

REPO = Path(__file__).resolve().parents[2]
# /work/shared/RECIPE.md's training command, verbatim
RECIPE = (
    "--model mobilenetv2_100 -b 384 --sched step --epochs 450 --decay-epochs 2.4 --decay-rate .97 "
    "--opt rmsproptf --opt-eps .001 -j 8 --warmup-lr 1e-6 --weight-decay 1e-5 --drop 0.2 --drop-path 0.2 "
    "--model-ema --model-ema-decay 0.9999 --aa rand-m9-mstd0.5 --remode pixel --reprob 0.2 --amp --lr .048"
)


# the recipe on a dataset: without one, any flags change the demo run instead
RECIPE_ARGV = [*RECIPE.split(), "--data-dir", "/data/imagenet"]


def parse(argv: list[str]) -> tuple[TrainConfig, str]:
    out = io.StringIO()
    return parse_config(argv, out=out), out.getvalue()


def test_recipe_command_line_parses_to_the_recipe_and_timm_defaults():
    config, printed = parse(RECIPE_ARGV)
    given = dict(
        model="mobilenetv2_100",
        batch_size=384,
        sched="step",
        epochs=450,
        decay_epochs=2.4,
        decay_rate=0.97,
        opt="rmsproptf",
        opt_eps=0.001,
        workers=8,
        warmup_lr=1e-6,
        weight_decay=1e-5,
        drop=0.2,
        drop_path=0.2,
        model_ema=True,
        model_ema_decay=0.9999,
        aa="rand-m9-mstd0.5",
        remode="pixel",
        reprob=0.2,
        amp=True,
        lr=0.048,
    )
    # RECIPE.md's "timm defaults that apply", plus the rest of timm train.py's defaults the recipe relies on
    defaults = dict(
        warmup_epochs=5,
        smoothing=0.1,
        train_interpolation="random",
        scale=(0.08, 1.0),
        ratio=(3 / 4, 4 / 3),
        hflip=0.5,
        momentum=0.9,
        dist_bn="reduce",
        sync_bn=False,
        sched_on_updates=False,
        model_ema_warmup=False,
        warmup_prefix=False,
        cooldown_epochs=0,
        min_lr=0.0,
        color_jitter=0.4,
        recount=1,
        mixup=0.0,
        cutmix=0.0,
        seed=42,
        clip_grad=None,
        checkpoint_hist=10,
        eval_metric="top1",
        log_interval=50,
        lr_base=0.1,
        lr_base_size=256,
    )
    for name, value in {**given, **defaults}.items():
        assert getattr(config, name) == (pytest.approx(value) if isinstance(value, float) else value), name
    assert config.drop_path_rate == 0.2
    assert printed == ""  # nothing in the recipe needs a mapping note


def test_jax_meaningless_flags_are_accepted_and_print_one_mapping_line_each():
    flags = [
        "--channels-last",
        "--pin-mem",
        "--no-prefetcher",
        "--torchscript",
        "--fuser",
        "te",
        "--amp-dtype",
        "bfloat16",
        "--amp-impl",
        "apex",
        "--model-ema-force-cpu",
        "--local_rank",
        "1",
        "--device",
        "cuda:0",
        "--grad-accum-steps",
        "1",
    ]
    config, printed = parse(RECIPE_ARGV + flags)
    lines = printed.splitlines()
    expected = [f for f in flags if f.startswith("--")]
    assert [line.split(":")[0] for line in lines] == [
        n for n in (e.names[0] for e in JAX_MAPPED.values()) if n in expected
    ]
    assert "--channels-last: mv2jax is always NHWC" in lines
    assert any(line.startswith("--amp-dtype: ") and "bfloat16" in line for line in lines)
    assert config == parse(RECIPE_ARGV)[0]  # they change nothing


def test_unknown_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        parse(["--model", "mobilenetv2_100", "--no-such-flag"])
    assert e.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--lr-noise", "0.4", "0.9"], "--lr-noise"),
        (["--bce-loss"], "--bce-loss"),
        (["--grad-accum-steps", "4"], "--grad-accum-steps"),
        (["--sched", "plateau"], "--sched"),
    ],
)
def test_timm_flags_mv2jax_does_not_implement_are_errors_naming_the_flag(argv, names, capsys):
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2
    assert names in capsys.readouterr().err


def test_yaml_values_are_defaults_and_the_command_line_wins(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "batch_size": 32,
                "lr": 0.5,
                "model_ema": True,
                "scale": [0.5, 1.0],
                "opt": "rmsproptf",
                "dataset": "digits",
                "channels_last": True,
            }
        )
    )
    config, printed = parse(["--config", str(path), "--lr", "0.1", "--batch-size", "8"])
    assert (config.batch_size, config.lr, config.model_ema, config.scale, config.opt) == (
        8,
        0.1,
        True,
        (0.5, 1.0),
        "rmsproptf",
    )
    assert printed.startswith("--channels-last: ")  # a mapped flag set in the file prints its note too
    short, _ = parse(["-c", str(path)])
    assert (short.batch_size, short.lr) == (32, 0.5)


def test_yaml_with_an_unknown_key_is_an_error(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text("batch_size: 32\nbatch_sise: 64\n")
    with pytest.raises(SystemExit) as e:
        parse(["--config", str(path)])
    assert e.value.code == 2
    assert "batch_sise" in capsys.readouterr().err


def test_saved_config_round_trips_through_yaml_and_as_a_config_file(tmp_path):
    config, _ = parse(RECIPE_ARGV + ["--mean", "0.5", "0.5", "0.5", "--input-size", "3", "160", "160"])
    text = yaml.safe_dump(config.to_dict())
    assert config_from_dict(yaml.safe_load(text)) == config
    path = tmp_path / "args.yaml"
    path.write_text(text)
    assert parse(["--config", str(path)])[0] == config


def test_no_arguments_is_the_quick_digits_run():
    config, printed = parse([])
    assert printed.startswith("no arguments: quick demo run (--model mobilenetv2_035 --dataset digits")
    for name, value in QUICK_RUN.items():
        assert getattr(config, name) == value, name
    with_dataset, printed = parse(["--dataset", "digits"])
    assert with_dataset.model == "mobilenetv2_100" and printed == ""  # a dataset given: timm's defaults


def test_flags_without_a_dataset_are_the_demo_run_with_those_flags(tmp_path):
    config, printed = parse(["--epochs", "30", "--output", "runs"])
    assert printed.startswith("no dataset given (--data-dir, --dataset): quick demo run (--model mobilenetv2_035 ")
    assert printed.endswith(" with --epochs 30 --output runs\n") and printed.count("\n") == 1
    assert (config.epochs, config.output) == (30, "runs")
    for name, value in QUICK_RUN.items():
        if name != "epochs":
            assert getattr(config, name) == value, name
    # a -c file is applied over the demo (its dataset, if any, means no demo at all); the command line wins over it
    path = tmp_path / "cfg.yaml"
    path.write_text("epochs: 3\nlr: 0.01\n")
    config, _ = parse(["-c", str(path), "--lr", "0.02"])
    assert (config.model, config.epochs, config.lr, config.batch_size) == ("mobilenetv2_035", 3, 0.02, 64)
    path.write_text("data_dir: /data/imagenet\n")
    config, printed = parse(["-c", str(path), "--epochs", "3"])
    assert (config.model, config.epochs, config.batch_size, printed) == ("mobilenetv2_100", 3, 128, "")
    for argv in (["/data/imagenet"], ["--data-dir", "/data/imagenet"], ["--dataset", "tfds/imagenet2012"]):
        assert parse(argv)[0].model == "mobilenetv2_100", argv


def test_aliases_map_to_timm_dest_names():
    for argv in (["-vb", "48"], ["--validation-batch-size", "48"], ["--val-batch-size", "48"]):
        assert parse(argv)[0].validation_batch_size == 48
    assert parse(["/data/imagenet"])[0].data_dir == "/data/imagenet"  # timm's deprecated positional
    assert parse(["--drop-connect", "0.1", "/data/imagenet"])[0].drop_path_rate == 0.1
    assert parse(["--dr", "0.5", "-j", "2"])[0].decay_rate == 0.5


def test_help_needs_no_jax():
    code = (
        "import sys; sys.argv = ['train.py', '--help']; import runpy\n"
        "try:\n    runpy.run_path('train.py', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0\n"
        "assert 'jax' not in sys.modules, 'parsing imported jax'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--model-ema-decay" in done.stdout and "--channels-last" in done.stdout
