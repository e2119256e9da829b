"""`python train.py` end to end on a tiny digits run: what it writes (timm's summary.csv, JSON lines, PNG curves,
args.yaml, checkpoints with last-N + best retention), that its EMA checkpoint is a timm model scoring what the
run reported, and that a non-finite step stops the run with one line and leaves the last checkpoint intact."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from mv2jax.train.config import ConfigError, config_from_dict, parse_config
from mv2jax.train.run import RESUME_IDENTITY, _check_same_run
from tests.train.test_checkpoint import (
    FINAL_STEP,
    REPO,
    RUN_FLAGS,
    TIMEOUT,
    assert_trees_equal,
    final_state,
    launch,
    output,
    steps_saved,
    wait,
)

TIMM_SUMMARY_COLUMNS = ["epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr"]
EPOCHS, STEPS_PER_EPOCH, LOG_INTERVAL, KEEP_LAST = 4, 4, 2, 2


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("loop") / "short"
    assert wait(launch(run_dir), run_dir, 0) == 0, output(run_dir, 0)[-3000:]
    return run_dir


def epoch_records(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "epoch"]


def test_short_run_writes_timm_summary_json_lines_png_and_args(short_run):
    with open(short_run / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == TIMM_SUMMARY_COLUMNS
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    records = [json.loads(line) for line in (short_run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(LOG_INTERVAL, EPOCHS * STEPS_PER_EPOCH + 1, LOG_INTERVAL))
    assert all(np.isfinite(r["loss"]) and r["img_per_s"] > 0 and r["grad_norm"] > 0 for r in steps)
    epochs = epoch_records(short_run)
    for row, rec in zip(rows, epochs, strict=True):
        # timm logs the EMA model's eval when EMA is on; raw and EMA both sit in the JSON record
        assert float(row["eval_top1"]) == rec["eval_ema"]["top1"] and float(row["eval_loss"]) == rec["eval_ema"]["loss"]
        assert float(row["train_loss"]) == rec["train_loss"] and float(row["lr"]) == rec["lr"]
        assert 0 <= rec["eval"]["top1"] <= rec["eval"]["top5"] <= 100
    # the lr timm logs per epoch: 1 warmup epoch at 1e-4, then 0.01 x 0.8^epoch
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-4, 0.008, 0.0064, 0.00512], rel=1e-12)
    assert (short_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = config_from_dict(yaml.safe_load((short_run / "args.yaml").read_text()))
    assert saved == parse_config(RUN_FLAGS + ["--output", str(short_run.parent), "--experiment", short_run.name])
    last = epochs[-1]
    assert f"EMA top-1 {last['eval_ema']['top1']:.2f}%" in output(short_run, 0)
    assert f"raw top-1 {last['eval']['top1']:.2f}%" in output(short_run, 0)


def test_summary_rows_are_what_timms_update_summary_writes(short_run, tmp_path):
    from timm.utils import update_summary

    for rec in epoch_records(short_run):
        update_summary(
            rec["epoch"],
            {"loss": rec["train_loss"]},
            rec["eval_ema"],
            tmp_path / "timm.csv",
            lr=rec["lr"],
            write_header=rec["epoch"] == 0,
        )
    assert (short_run / "summary.csv").read_text() == (tmp_path / "timm.csv").read_text()


def test_checkpoints_keep_the_last_n_plus_the_best_by_ema_top1(short_run):
    top1 = [r["eval_ema"]["top1"] for r in epoch_records(short_run)]
    best_epoch = max(range(EPOCHS), key=lambda e: (top1[e], e))  # ties: orbax keeps the latest
    last_steps = [(e + 1) * STEPS_PER_EPOCH for e in range(EPOCHS - KEEP_LAST, EPOCHS)]
    assert steps_saved(short_run) == sorted({(best_epoch + 1) * STEPS_PER_EPOCH, *last_steps})
    assert f"best checkpoint: checkpoints/{(best_epoch + 1) * STEPS_PER_EPOCH}" in output(short_run, 0)


def test_final_ema_checkpoint_loads_into_timm_and_scores_the_reported_top1(short_run):
    import timm
    import torch

    from mv2jax.convert import read_checkpoint, read_orbax
    from mv2jax.data import create_dataset, create_transform

    step_dir = short_run / "checkpoints" / str(FINAL_STEP)
    _, meta = read_orbax(step_dir)
    model = timm.create_model(meta["model_name"], num_classes=meta["num_classes"]).eval()
    model.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in read_checkpoint(step_dir, use_ema=True).items()}, strict=True
    )
    data_config = meta["data_config"]
    transform = create_transform(**{k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()})
    dataset = create_dataset("digits", None, "validation", image_size=data_config["input_size"][-1])
    images = np.stack([transform(dataset[i][0]) for i in range(len(dataset))])
    labels = np.array([dataset[i][1] for i in range(len(dataset))])
    with torch.no_grad():
        logits = model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    timm_top1 = 100.0 * np.mean(logits.argmax(-1) == labels)
    reported = epoch_records(short_run)[-1]["eval_ema"]["top1"]
    assert abs(timm_top1 - reported) <= 100.0 / len(labels)  # at most one tie broken differently


def test_non_finite_step_stops_with_one_line_and_the_last_checkpoint_stays_intact(short_run, tmp_path):
    run_dir = tmp_path / short_run.name
    shutil.copytree(short_run, run_dir)
    steps_before = steps_saved(run_dir)
    state_before = final_state(run_dir, steps_before[-1])
    # restart epoch 3 with std 0: every normalised pixel is inf or nan, so the first update is non-finite
    proc = launch(run_dir, "--start-epoch", "3", "--std", "0", "0", "0")
    assert wait(proc, run_dir, 1) == 1, output(run_dir, 1)[-3000:]
    err = (run_dir / "stderr1").read_text()
    messages = [line for line in err.splitlines() if line.startswith("train.py:")]
    assert len(messages) == 1 and messages[0].startswith("train.py: stopped: non-finite training at step 12 ")
    assert "Traceback" not in err
    assert steps_saved(run_dir) == steps_before
    assert [p.name for p in (run_dir / "checkpoints").iterdir() if not p.name.isdigit()] == []
    assert_trees_equal(final_state(run_dir, steps_before[-1]), state_before)


def test_auto_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    config = parse_config(RUN_FLAGS)
    run = SimpleNamespace(config=config, run_dir=tmp_path)
    _check_same_run(run, {"config": config.to_dict()})  # same run: fine
    for name, value in (("batch_size", 32), ("seed", 1), ("model", "mobilenetv2_050")):
        assert name in RESUME_IDENTITY
        other = dict(config.to_dict(), **{name: value})
        with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')}"):
            _check_same_run(run, {"config": other})
    _check_same_run(run, {"config": dict(config.to_dict(), epochs=10, lr=0.5)})  # may change on resume


def test_each_epoch_line_gives_its_train_eval_and_checkpoint_time_apart(short_run):
    text = output(short_run, 0)
    lines = [line for line in text.splitlines() if line.startswith("Epoch ")]
    records = epoch_records(short_run)
    assert len(lines) == len(records) == EPOCHS
    for line, rec in zip(lines, records, strict=True):
        times = [rec[f"{name}_time"] for name in ("train", "eval", "checkpoint")]
        assert all(t > 0 for t in times), rec
        expected = f"train {times[0]:.1f} s, eval {times[1]:.1f} s, checkpoint {times[2]:.1f} s"
        assert line.endswith(f" | {expected}"), line
    wall = float(text.split("Done: ")[1].split(" s;")[0].split(" in ")[1])
    assert sum(rec["train_time"] + rec["eval_time"] + rec["checkpoint_time"] for rec in records) <= wall


def test_reading_its_checkpoints_prints_no_absl_or_orbax_warning(short_run, tmp_path):
    """validate, export, predict and convert_weights.py on a train.py step directory and on convert_weights.py's
    own output: nothing at all on stderr."""
    step = short_run / "checkpoints" / str(steps_saved(short_run)[-1])
    converted = tmp_path / "converted"
    code = f"""
import runpy
from mv2jax import predict, validate
from mv2jax.convert.verify import photo_path
from mv2jax.export.source import load_model
convert = runpy.run_path("convert_weights.py", run_name="not_main")["main"]
timm_file = {str(tmp_path / "m.safetensors")!r}
assert convert(["--to-timm", "--input", {str(step)!r}, "--output", timm_file]) == 0
assert convert(["--model", "mobilenetv2_035", "--checkpoint", timm_file, "--output", {str(converted)!r}]) == 0
for directory in ({str(step)!r}, {str(converted)!r}):
    validate.load_model(validate.build_parser().parse_args(["--checkpoint", directory]))
    load_model(None, checkpoint=directory)
    assert predict.main([str(photo_path(None)), "--checkpoint", directory, "--img-size", "32"]) == 0
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == "", done.stderr[-3000:]
