"""`mv2jax.bench.timm_train_compare` without training: its Welch interval against scipy, the EMA gain, the curves
PNG read from synthetic run directories, the JSON report and its BENCHMARKS.md section, and the same-init export
against timm. The real comparison trains for minutes per run: a benchmark, not a test."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from mv2jax.bench import timm_train_compare
from mv2jax.bench.train_compare_plot import mean_band, plot_curves
from mv2jax.bench.train_compare_report import build_report, differences, markdown_section, results_of, write_report
from mv2jax.bench.train_compare_runs import (
    NUM_CLASSES,
    Epoch,
    Result,
    export_initial_weights,
    read_mv2jax_run,
    read_timm_run,
    run_timm,
)
from mv2jax.bench.welch import summarize, welch
from mv2jax.train.config import QUICK_RUN

MV2JAX_EMA = [72.4, 78.3, 90.5, 78.6, 84.1, 80.5, 74.4, 83.3]
TIMM_EMA = [88.9, 87.2, 85.2, 78.8, 83.8, 88.0, 89.4, 80.8, 86.1]  # one more run: unequal sizes


def test_welch_interval_t_and_df_match_scipy():
    got = welch(MV2JAX_EMA, TIMM_EMA)
    ref = scipy.stats.ttest_ind(MV2JAX_EMA, TIMM_EMA, equal_var=False)
    low, high = ref.confidence_interval(0.95)
    assert got is not None
    assert got.difference == pytest.approx(np.mean(MV2JAX_EMA) - np.mean(TIMM_EMA), rel=1e-12)
    assert (got.t, got.df, got.low, got.high) == pytest.approx((ref.statistic, ref.df, low, high), rel=1e-10)
    wide = welch(MV2JAX_EMA, TIMM_EMA, level=0.99)
    assert wide is not None and wide.low < got.low and wide.high > got.high


def test_welch_is_none_below_two_runs_a_side_and_a_point_without_spread():
    assert welch([80.0], TIMM_EMA) is None
    flat = welch([80.0, 80.0], [79.0, 79.0, 79.0])
    assert flat is not None and (flat.difference, flat.low, flat.high, flat.t, flat.df) == (1.0, 1.0, 1.0, None, None)
    assert summarize([1.0, 2.0, 3.0]).std == pytest.approx(1.0)  # sample std: n - 1
    assert summarize([5.0]).std is None and summarize([]).mean is None


def _result(seed: int, side: str, raw: float | None, ema: float | None, returncode: int = 0) -> Result:
    epochs = (Epoch(0, 2.0, 10.0, 9.0, 1e-3), Epoch(1, 1.5, raw, ema, 5e-4))
    return Result(seed, side, epochs, 60.0 + seed, returncode)


RAW_EMA = {
    "mv2jax": [(80.0, 80.5), (82.0, 81.0), (78.0, 79.5), (85.0, 86.0)],
    "timm": [(83.0, 84.5), (84.0, 85.0), (81.0, 83.0), (86.0, 87.5)],
}


def _results() -> list[Result]:
    results = [_result(i, side, raw, ema) for side, pairs in RAW_EMA.items() for i, (raw, ema) in enumerate(pairs)]
    return results + [_result(9, "timm", 10.0, 99.0, returncode=1)]  # a failed run counts nowhere


def test_ema_gain_is_ema_minus_raw_per_run_compared_across_sides_without_failed_runs():
    results = _results()
    assert results[0].ema_gain == pytest.approx(0.5) and _result(0, "timm", None, 80.0).ema_gain is None
    gains = {side: [ema - raw for raw, ema in pairs] for side, pairs in RAW_EMA.items()}
    got = differences(results)
    expected = welch(gains["mv2jax"], gains["timm"])
    assert expected is not None and got["ema_gain"] is not None
    assert got["ema_gain"]["difference"] == pytest.approx(expected.difference)
    assert (got["ema_gain"]["low"], got["ema_gain"]["high"]) == pytest.approx((expected.low, expected.high))
    emas = {side: [ema for _, ema in pairs] for side, pairs in RAW_EMA.items()}
    assert got["ema"]["t"] == pytest.approx(scipy.stats.ttest_ind(emas["mv2jax"], emas["timm"], equal_var=False)[0])


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _synthetic_runs(root: Path, epochs: int = 3) -> tuple[Path, Path, Path]:
    """An mv2jax run directory (summary.csv, log.jsonl) and a timm one (summary.csv, stdout with 'Test:' lines)."""
    mv2jax_dir, timm_dir = root / "mv2jax" / "compare", root / "timm" / "compare"
    rows = [
        dict(epoch=e, train_loss=2.0 - 0.5 * e, eval_loss=1.0, eval_top1=60.0 + 10 * e, eval_top5=99.0, lr=1e-3)
        for e in range(epochs)
    ]
    _write_csv(mv2jax_dir, rows)
    records = [{"kind": "step", "step": 1, "loss": 2.3}] + [
        {"kind": "epoch", "epoch": e, "eval": {"top1": 55.0 + 10 * e}, "eval_ema": {"top1": 60.0 + 10 * e}}
        for e in range(epochs)
    ]
    (mv2jax_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    _write_csv(timm_dir, [dict(r, eval_top1=r["eval_top1"] + 2) for r in rows])
    lines = []
    for e in range(epochs):
        for name, top1 in (("Test", 50.0 + 10 * e), ("Test (EMA)", 62.0 + 10 * e)):
            lines.append(f"{name}: [   0/5]  Time: 0.1  Loss:  1.0 (1.0)  Acc@1:  10.000 ( 10.000)  Acc@5: 99 ( 99)")
            lines.append(f"{name}: [   5/5]  Time: 0.1  Loss:  1.0 (1.0)  Acc@1:  99.000 ({top1:7.3f})  Acc@5: 9 (9)")
    (root / "timm" / "stdout.log").write_text("\n".join(lines) + "\n")
    return mv2jax_dir, timm_dir, root / "timm" / "stdout.log"


def _shifted(epoch: Epoch, by: float) -> Epoch:
    """`epoch` with its top-1 figures `by` points higher (another seed for the band)."""
    assert epoch.raw_top1 is not None and epoch.ema_top1 is not None
    return dataclasses.replace(epoch, raw_top1=epoch.raw_top1 + by, ema_top1=epoch.ema_top1 + by)


def test_both_sides_run_directories_read_back_per_epoch_and_the_curves_png_is_written(tmp_path):
    mv2jax_dir, timm_dir, timm_log = _synthetic_runs(tmp_path)
    mv2jax_epochs, timm_epochs = read_mv2jax_run(mv2jax_dir), read_timm_run(timm_dir, timm_log)
    assert mv2jax_epochs[2] == Epoch(2, 1.0, 75.0, 80.0, 1e-3)
    assert timm_epochs[1] == Epoch(1, 1.5, 60.0, 72.0, 1e-3)
    results = [
        Result(seed, side, tuple(_shifted(e, seed) for e in epochs), 1.0, 0)
        for seed in range(3)
        for side, epochs in (("mv2jax", mv2jax_epochs), ("timm", timm_epochs))
    ]
    epochs, means, stds = mean_band([r for r in results if r.side == "timm"], "ema_top1")
    assert epochs == [0, 1, 2] and means == pytest.approx([63.0, 73.0, 83.0]) and stds == pytest.approx([1.0] * 3)
    png = tmp_path / "curves.png"
    plot_curves(results, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def _report() -> dict:
    machine = {"cpu_model": "Test CPU", "cores_available": 2, "load_avg_1_5_15": [1.0, 1.0, 1.0], "python": "3.11"}
    machine.update(jax="0.10.2", timm="1.0.31", load_after=[2.0, 1.0, 1.0])
    config = {
        "recipe": dict(QUICK_RUN),
        "seeds": [0, 1, 2, 3, 9],
        "sides": ["mv2jax", "timm"],
        "same_init": True,
        "reference": "timm train.py",
        "timm_train_py": "/x/train.py",
        "timm_train_py_sha256": "ab" * 32,
        "images": {"train": 1438, "validation": 359},
        "timm_threads": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "4"},
    }
    return build_report(
        _results(), date="2026-12-04T10:00:00+00:00", command="python -m x", machine=machine, config=config
    )


def test_json_report_round_trips_and_renders_as_a_benchmarks_section(tmp_path):
    report = _report()
    write_report(tmp_path / "report.json", report)
    loaded = json.loads((tmp_path / "report.json").read_text())
    assert results_of(loaded) == _results()
    assert loaded["sides"]["mv2jax"]["ema"]["n"] == 4 and loaded["sides"]["timm"]["raw"]["n"] == 4
    assert loaded["sides"]["mv2jax"]["ema"]["mean"] == pytest.approx(81.75)
    assert loaded["runs"][4]["lr_mismatch"] == 0.0 and "lr_mismatch" not in loaded["runs"][0]
    d = loaded["differences"]["ema"]
    assert d["low"] < d["difference"] < d["high"] and d["level"] == 0.95
    text = markdown_section(loaded, "Demo vs timm")
    assert text.startswith("## Demo vs timm (2026-12-04)\n")
    assert "- Versions: Python 3.11, jax 0.10.2, timm 1.0.31" in text
    assert "same on both sides" in text and "359 held-out images (1 image = 0.28 points)" in text
    assert "; timm's side with OMP_NUM_THREADS=1 MKL_NUM_THREADS=4\n" in text
    ema_row = next(line for line in text.splitlines() if line.startswith("| EMA |"))
    assert "81.75 ± 2.90 (4)" in ema_row and f"[{d['low']:+.2f}, {d['high']:+.2f}]" in ema_row
    assert "| 0 | 80.00 / 80.50 | 83.00 / 84.50 | 60 / 60 | 0 / 0 | 0.0e+00 |" in text
    assert "| 9 | - | 10.00 / 99.00 | - / 69 | - / 1 | - |" in text


def test_cli_renders_a_saved_report_appends_the_section_and_exits_1_for_a_failed_run(tmp_path):
    write_report(tmp_path / "report.json", _report())
    bench = tmp_path / "BENCHMARKS.md"
    bench.write_text("# Benchmarks\n\nolder sections\n")
    argv = ["--out", str(tmp_path / "out"), "--from-json", str(tmp_path / "report.json")]
    assert timm_train_compare.main([*argv, "--markdown", str(bench), "--title", "T"]) == 1  # seed 9 failed
    section = (tmp_path / "out" / "report.md").read_text()
    assert bench.read_text() == "# Benchmarks\n\nolder sections\n\n" + section
    assert (tmp_path / "out" / "curves.png").is_file()


@pytest.mark.timm
def test_same_init_export_loads_strictly_into_timm_and_equals_mv2jax_at_that_seed(tmp_path):
    timm = pytest.importorskip("timm")
    import torch

    import mv2jax
    from mv2jax.convert import mv2jax_to_timm

    path = export_initial_weights(3, tmp_path / "seed3.safetensors")
    model = timm.create_model(QUICK_RUN["model"], num_classes=NUM_CLASSES)
    timm.models.load_checkpoint(model, str(path), strict=True)  # what --initial-checkpoint does in timm's train.py
    expected = mv2jax_to_timm(mv2jax.create_model(QUICK_RUN["model"], num_classes=NUM_CLASSES, seed=3))
    state = model.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], torch.from_numpy(value)), key
    # mv2jax's train.py loads the same file through the same road back to the seed's weights
    again = mv2jax_to_timm(mv2jax.create_model(QUICK_RUN["model"], num_classes=NUM_CLASSES, checkpoint_path=path))
    assert all(np.array_equal(again[k], v) for k, v in expected.items())
    other = mv2jax_to_timm(mv2jax.create_model(QUICK_RUN["model"], num_classes=NUM_CLASSES, seed=4))
    assert not np.array_equal(other["classifier.weight"], expected["classifier.weight"])


def test_timms_side_runs_single_threaded_unless_the_environment_sets_its_threads(tmp_path, monkeypatch):
    train_py = tmp_path / "train.py"  # a stand-in that reports the environment it was given
    train_py.write_text("import os\nprint(os.environ.get('OMP_NUM_THREADS'), os.environ.get('MKL_NUM_THREADS'))\n")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")
    result = run_timm(0, tmp_path / "out", train_py)
    assert result.returncode == 0 and result.epochs == ()
    assert (tmp_path / "out" / "timm" / "seed0" / "stdout.log").read_text() == "1 3\n"


def test_the_stand_in_takes_initial_checkpoint_as_timms_train_py_does():
    from mv2jax.bench.timm_reference_train import _parser

    assert _parser().parse_args(["--initial-checkpoint", "w.safetensors"]).initial_checkpoint == "w.safetensors"
    assert _parser().parse_args([]).initial_checkpoint == ""


def test_a_rerun_reuses_finished_runs_of_the_same_command_and_retrains_a_changed_or_unfinished_one(tmp_path):
    """An interrupted comparison (an hour for 16 seeds) resumes: a run that finished recorded its result and
    command; the same command reuses it, another command or a run without a record trains again."""
    train_py = tmp_path / "train.py"  # counts its runs in a file outside the run directory
    counter = tmp_path / "runs.txt"
    train_py.write_text(f"open({str(counter)!r}, 'a').write('x')\n")
    out = tmp_path / "out"
    first = run_timm(0, out, train_py)
    again = run_timm(0, out, train_py)
    assert counter.read_text() == "x" and again == first
    run_timm(0, out, train_py, init=tmp_path / "w.safetensors")  # another command: trained again
    assert counter.read_text() == "xx"
    (out / "timm" / "seed0" / "result.json").unlink()  # killed before it finished: trained again
    run_timm(0, out, train_py, init=tmp_path / "w.safetensors")
    assert counter.read_text() == "xxx"
