"""The benchmark's accelerator phases (`mv2jax.bench.accel_side`, `accel_report`): the phase names, the upward
largest-batch search on a synthetic memory line, the printed and markdown report from a saved JSON (no compile:
any environment), the skipped row without libtpu, and, marked `accel` (libtpu and jax's CUDA plugin: CI's accel
venv), the phases end to end on a small config for a TPU slice and an H100 beside the Flax reference."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from mv2jax.bench.accel_side import largest_batch, phase_variant, split_variant
from mv2jax.bench.common import BenchConfig, machine_info
from mv2jax.bench.markdown import markdown_section
from mv2jax.bench.report import format_report, summarize
from mv2jax.benchmark import Phase, parse_args, plan
from tests.test_accel_compile_only import _has
from tests.test_accel_compile_only import _synthetic as _line

ROOT = Path(__file__).resolve().parent.parent


def _benchmark(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mv2jax.benchmark", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


# --- anywhere ------------------------------------------------------------------------------------------------------


def test_accel_phases_are_named_by_target_and_precision_and_planned_last():
    name = "mv2jax:accel:" + phase_variant("v5e:2x2", "bf16")
    assert Phase.parse(name) == Phase("mv2jax", "accel", "v5e:2x2/bf16") and Phase.parse(name).name == name
    assert split_variant("v5e:2x2/fp32") == ("v5e:2x2", "fp32")
    args = parse_args(["--skip-timm", "--accel-targets", "v5e:2x2", "h100", "--accel-precisions", "bf16", "fp32"])
    accel = [p.variant for p in plan(args) if p.mode == "accel"]
    assert accel == ["v5e:2x2/bf16", "v5e:2x2/fp32", "h100/bf16", "h100/fp32"]
    assert plan(args)[-1].mode == "accel"
    assert not [p for p in plan(parse_args(["--quick"])) if p.mode == "accel"]  # --quick: only named targets
    assert not [p for p in plan(parse_args(["--skip-accel"])) if p.mode == "accel"]


def test_an_unknown_accel_target_is_one_line_naming_the_flag():
    proc = _benchmark("--quick", "--phases", "accel", "--accel-targets", "v9z:2x2")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--accel-targets 'v9z:2x2'" in proc.stderr and "v5e:2x2" in proc.stderr


@pytest.mark.parametrize("compile_limit", [None, 1400])
def test_the_largest_batch_above_a_fitting_one_takes_one_more_point_and_one_confirmation(compile_limit):
    capacity, base, per_image = 1000, 100, 7  # fits up to (1000 - 100) // 7 = 128
    measure, calls = _line(capacity, base, per_image, compile_limit)
    first = measure(100)
    found, tried = largest_batch(measure, first)
    assert found is not None and found.batch_per_device == (capacity - base) // per_image
    # 200 gives the line (refused outright under the limit: then 50 does), 128 confirms it
    assert tried == ([200, 50, 128] if compile_limit else [200, 128]) and calls == [100, *tried]


def test_the_largest_batch_below_a_step_that_does_not_fit_searches_down():
    measure, _ = _line(capacity=1000, base=100, per_image=7)
    found, tried = largest_batch(measure, measure(512))
    assert found is not None and found.batch_per_device == 128 and tried[-1] == 128


def test_the_largest_batch_cell_names_the_smallest_batch_that_did_not_fit_when_the_search_stopped_short():
    from mv2jax.bench.accel_report import _largest

    cap = 16 << 30
    close = {"batch_per_chip": 611, "total_bytes": 15 << 30, "batches_compiled": [256, 620, 611]}
    assert _largest(close, cap) == "611 (94%)"
    stopped = {"batch_per_chip": 1410, "total_bytes": int(0.92 * cap), "batches_compiled": [256, 893, 1410, 2767]}
    assert _largest(stopped, cap) == "1410 (92%), 2767 not"
    assert _largest({"batch_per_chip": None}, cap) == "none"


PER_WORKER = 39.5  # the saved report's RA transform, images/s per worker


def _step(batch: int, flops: float, hbm: float, temp: int, fusions: int, roofline: float) -> dict:
    return {
        "step": "train",
        "batch_per_device": batch,
        "fits": True,
        "out_of_memory": "",
        "compile_s": 130.0,
        "state_bytes": 40 << 20,
        "temp_bytes": temp,
        "total_bytes": temp + (60 << 20),
        "capacity_bytes": 16 << 30,
        "flops": flops * batch,
        "hbm_bytes": hbm * batch,
        "flops_per_image": flops,
        "hbm_bytes_per_image": hbm,
        "roofline_images_per_s": roofline,
        "fusions": fusions,
        "cudnn_convolutions": 0,
        "xla_convolutions": 0,
    }


def _saved_report() -> dict:
    """A report as `--output` writes it: a loader transform row and one accel row (v5e, bf16) with a reference
    and a largest batch, one skipped accel row."""
    chip = {"name": "v5e", "description": "TPU v5e", "source": "https://cloud.google.com/tpu/docs/v5e"}
    chip |= {"peak_bf16_flops": 197e12, "memory_bandwidth": 819e9, "memory_bytes": 16 << 30}
    ours = _step(128, 2.21e9, 245e6, 3 << 30, 746, 3340.2)
    ref = _step(128, 2.20e9, 187e6, 2.35e9, 423, 4371.0)
    accel = {
        "side": "mv2jax",
        "mode": "accel",
        "variant": "v5e:2x2/bf16",
        "batch_size": 128,
        "target": "v5e:2x2",
        "precision": "bf16",
        "model": "mobilenetv2_100",
        "img_size": 224,
        "status": "ok",
        "platform": "tpu",
        "chip": chip,
        "devices": 4,
        "hosts": 1,
        "versions": {"jax": "0.10.2", "jaxlib": "0.10.2", "libtpu": "0.0.42.1"},
        "mv2jax": ours,
        "reference": ref,
        "mv2jax_over_reference": {"hbm_bytes": 245 / 187, "temp_bytes": (3 << 30) / 2.35e9, "fusions": 746 / 423},
        "largest_batch": {"batch_per_chip": 611, "total_bytes": 15 << 30, "batches_compiled": [256, 611]},
        "notes": [],
    }
    skipped = {"side": "mv2jax", "mode": "accel", "variant": "h100/bf16", "batch_size": 128, "status": "skipped"}
    skipped["error"] = 'compiling for CUDA needs the plugin: pip install "jax[cuda12]==0.10.2"; or ...'
    loader = {"side": "mv2jax", "mode": "loader", "variant": "transform", "batch_size": 1, "status": "ok"}
    loader |= {"workers": 1, "images_per_s": {"median": PER_WORKER}, "images_per_s_per_worker": PER_WORKER}
    loader["first_run_s"] = 7.0
    results = [loader, accel, skipped]
    return {
        "date": "2026-12-07T09:00:00+00:00",
        "command": "python -m mv2jax.benchmark --phases accel loader",
        "config": BenchConfig().to_json(),
        "machine": machine_info(),
        "threads": {"count": 2, "description": "2"},
        "host_memory": "default",
        "load_before": [1.0, 1.0, 1.0],
        "load_after": [1.0, 1.0, 1.0],
        "conv_impl_auto": None,
        "step_impl": None,
        "loader_data": None,
        "results": results,
        "summary": summarize(results, (1, 32), None),
    }


def test_feeding_the_chip_divides_the_roofline_by_the_transform_per_worker():
    feed = _saved_report()["summary"]["accel"]
    assert feed["transform_images_per_s_per_worker"] == PER_WORKER
    row = feed["per_target"]["v5e:2x2/bf16"]
    assert row["loader_workers_per_chip"] == math.ceil(3340.2 / PER_WORKER) and row["host_vcpus_per_chip"] == 28


def test_the_accel_report_renders_from_a_saved_json_in_print_and_markdown(tmp_path):
    report = _saved_report()
    saved, md = tmp_path / "run.json", tmp_path / "BENCHMARKS.md"
    saved.write_text(json.dumps(report))
    proc = _benchmark("--from-json", str(saved), "--markdown", str(md), "--title", "Accelerators", timeout=300)
    assert proc.returncode == 0, proc.stderr
    workers = str(math.ceil(3340.2 / PER_WORKER))
    printed, text = proc.stdout, md.read_text()
    assert printed.startswith(format_report(report)) and text.endswith(markdown_section(report, "Accelerators"))
    row = next(line for line in text.splitlines() if line.startswith("| v5e:2x2 | bf16 | 128 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # GFLOP/img, HBM MB/img, fusions, roofline, ref HBM MB/img, the three ratios, largest batch, loader workers
    assert [cells[i] for i in (3, 4, 7, 9, 10, 13, 14, 15, 16, 17)] == [
        "2.21",
        "245",
        "746",
        "3,340",
        "187",
        f"{245 / 187:.2f}x",
        f"{(3 << 30) / 2.35e9:.2f}x",
        f"{746 / 423:.2f}x",
        "611 (94%)",  # 15 of the chip's 16 GiB
        workers,
    ]
    assert f"{workers} workers for 3,340 img/s" in text and "28-60 vCPUs per chip" in text
    assert "h100/bf16: skipped" in text and 'pip install "jax[cuda12]' in text
    assert "| mode | side |" not in text  # no model phases ran: no empty throughput table
    assert "v5e:2x2" in printed and workers in printed


@pytest.mark.skipif(_has("libtpu"), reason="tests the environment without libtpu")
def test_without_libtpu_the_phase_is_skipped_with_the_pip_command(tmp_path):
    out = tmp_path / "run.json"
    proc = _benchmark("--quick", "--phases", "accel", "--accel-targets", "v5e:2x2", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(out.read_text())["results"]
    assert row["status"] == "skipped" and 'pip install "jax[tpu]==' in row["error"] and "--accel-python" in row["error"]


# --- with libtpu and the CUDA plugin (CI's accel venv) -------------------------------------------------------------

SMALL = ["--model", "mobilenetv2_035", "--img-size", "32", "--accel-batch", "2"]


@pytest.mark.accel
@pytest.mark.skipif(not (_has("libtpu") and _has("jax-cuda12-plugin")), reason="needs libtpu and the CUDA plugin")
def test_accel_phases_compile_both_steps_per_target_in_a_fresh_process_of_the_given_python(tmp_path):
    out = tmp_path / "run.json"
    targets = ["--accel-targets", "v5e:2x2", "h100", "--accel-python", sys.executable]
    proc = _benchmark("--quick", *SMALL, "--phases", "accel", *targets, "--output", str(out), timeout=1500)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    rows = {r["variant"]: r for r in report["results"]}
    assert set(rows) == {"v5e:2x2/bf16", "h100/bf16"}
    for variant, r in rows.items():
        assert r["status"] == "ok", r.get("error")
        ours, ref, chip = r["mv2jax"], r["reference"], r["chip"]
        assert ours["batch_per_device"] == ref["batch_per_device"] == 2 and r["devices"] == (
            4 if "v5e" in variant else 1
        )
        # the same network (mv2jax's float32 BatchNorm and casts count some more flops; a wrong size would be 4x)
        assert 0.8 < ours["flops"] / ref["flops"] < 1.5
        assert r["mv2jax_over_reference"]["hbm_bytes"] == pytest.approx(ours["hbm_bytes"] / ref["hbm_bytes"])
        assert ours["fusions"] > 0 and ref["fusions"] > 0 and ours["temp_bytes"] >= 0
        expected = 2 / max(ours["flops"] / chip["peak_bf16_flops"], ours["hbm_bytes"] / chip["memory_bandwidth"])
        assert ours["roofline_images_per_s"] == pytest.approx(expected)
        assert f"| {r['target']} | bf16 | 2 |" in markdown_section(report, "t")
    assert rows["h100/bf16"]["mv2jax"]["xla_convolutions"] == 0 and rows["h100/bf16"]["notes"]
    assert rows["v5e:2x2/bf16"]["versions"]["libtpu"]
