"""`python -m mv2jax.benchmark --quick` end to end: the JSON report has every field, with sane values, and the
ratios agree with the throughputs; the loader phases run on a few tiny sample JPEGs. No timing assertions: only
that the numbers exist and are consistent."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from mv2jax.bench.common import MODEL_MODES
from mv2jax.bench.report import format_report, summarize
from mv2jax.bench.roofline import requirements
from mv2jax.benchmark import Phase, parse_args, plan

ROOT = Path(__file__).resolve().parent.parent
BATCH_SIZES = (1, 2)
TRAIN_BATCH = 2
LOADER_VARIANTS = ("transform", "loader_j0", "loader_j2")


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="module")
def run(bench_dir) -> tuple[dict, str]:
    """(the JSON report, the printed table) of one quick run of every phase; its markdown section goes to
    `bench.md` beside the report."""
    out = bench_dir / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "mv2jax.benchmark",
        "--quick",
        "--batch-sizes",
        *map(str, BATCH_SIZES),
        "--train-batch-size",
        str(TRAIN_BATCH),
        "--output",
        str(out),
        "--markdown",
        str(out.with_suffix(".md")),
        "--title",
        "Quick run",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.fixture(scope="module")
def report(run) -> dict:
    assert "mv2jax best / timm best" in run[1]
    return run[0]


def _positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_quick_report_describes_the_machine_and_run(report):
    m = report["machine"]
    assert m["cpu_model"] and m["cores_available"] >= 1 and m["jax"] and m["torch"] and m["timm"]
    assert report["threads"]["count"] == m["cores_available"]
    assert report["config"]["model"] == "mobilenetv2_035" and report["config"]["img_size"] == 64
    assert report["conv_impl_auto"] == "cpu"  # the tests run on the CPU backend
    assert report["conv_impls_run"] == ["cpu", "xla"]
    assert report["step_impl"] in ("mv2jax.train.step", "mv2jax.bench.fallback_step")


def test_quick_report_has_every_measurement_with_sane_values(report):
    results = report["results"]
    assert all(r["status"] == "ok" for r in results), [r.get("error") for r in results if r["status"] != "ok"]
    expected = {("mv2jax", "inference", f"conv_impl={i}", b) for i in ("cpu", "xla") for b in BATCH_SIZES}
    expected |= {("mv2jax", "inference", "fused conv_impl=cpu", b) for b in BATCH_SIZES}
    expected |= {("mv2jax", "train", f"conv_impl={i}", TRAIN_BATCH) for i in ("cpu", "xla")}
    timm_variants = ("eager", "channels_last", "channels_last_1thread")
    expected |= {("timm", "inference", v, b) for v in timm_variants for b in BATCH_SIZES}
    expected |= {("timm", "train", v, TRAIN_BATCH) for v in timm_variants}
    expected |= {
        (s, "loader", v, 1 if v == "transform" else TRAIN_BATCH) for s in ("mv2jax", "timm") for v in LOADER_VARIANTS
    }
    expected |= {("mv2jax", "roofline", "xla", 0), ("mv2jax", "lowering", "xla", TRAIN_BATCH)}
    assert {(r["side"], r["mode"], r["variant"], r["batch_size"]) for r in results} == expected
    for r in (r for r in results if r["mode"] not in ("roofline", "lowering")):
        ips = r["images_per_s"]
        assert all(_positive(ips[k]) for k in ("median", "min", "max")), r
        cfg = report["config"]["loader"] if r["mode"] == "loader" else report["config"]
        assert ips["min"] <= ips["median"] <= ips["max"] and len(ips["runs"]) == cfg["repeats"]
        assert _positive(r["peak_rss_mib"])
        if r["mode"] == "loader":  # no compile, and torch runs one thread as in a DataLoader worker
            continue
        assert _positive(r["compile"]["first_call_s"])
        if r["side"] == "timm":
            assert r["threads"] == (1 if r["variant"].endswith("_1thread") else report["threads"]["count"])


def test_quick_report_has_the_train_step_op_histogram_per_accelerator(report):
    lowered = {r["platform"]: r for r in report["results"] if r["mode"] == "lowering"}
    assert sorted(lowered) == ["cuda", "tpu"]
    for r in lowered.values():
        assert r["ops"]["stablehlo.convolution"] > 0 and r["control_flow"] == {} and r["custom_calls"] == {}
    assert "train step lowered for accelerators" in format_report(report)


def test_quick_report_has_xla_compile_memory_and_cost_analyses(report):
    for r in (r for r in report["results"] if r["side"] == "mv2jax" and r["mode"] in MODEL_MODES):
        c = r["compile"]
        assert _positive(c["lower_s"]) and _positive(c["compile_s"])
        assert _positive(c["memory_mib"]["argument"]) and c["memory_mib"]["temp"] >= 0
        if r["variant"].startswith("fused") and r["batch_size"] > 2:
            assert "cost_per_image" not in c  # a loop over groups of 2: XLA counts the loop body once
            continue
        assert _positive(c["cost_per_image"]["gflops"]) and _positive(c["cost_per_image"]["mib_accessed"])
    xla = {
        r["mode"]: r["compile"]["cost_per_image"]["gflops"]
        for r in report["results"]
        if r.get("conv_impl") == "xla" and r["batch_size"] == TRAIN_BATCH
    }
    assert xla["train"] > 2 * xla["inference"]  # forward + backward (~3x forward)


def test_quick_report_ratios_match_the_throughputs(report):
    results, summary = report["results"], report["summary"]
    for mode, batches in (("inference", BATCH_SIZES), ("train", (TRAIN_BATCH,))):
        for b in batches:
            comp = summary[mode][str(b)]
            rates = {
                (r["side"], r["variant"]): r["images_per_s"]["median"]
                for r in results
                if r["mode"] == mode and r["batch_size"] == b
            }
            best_timm = max(v for (side, _), v in rates.items() if side == "timm")
            best_mv2 = max(v for (side, _), v in rates.items() if side == "mv2jax")
            assert comp["timm_best"]["images_per_s"] == pytest.approx(best_timm)
            assert comp["mv2jax_best"]["images_per_s"] == pytest.approx(best_mv2)
            assert comp["ratio"] == pytest.approx(best_mv2 / best_timm)
            for variant, ratio in comp["per_variant"].items():
                assert ratio == pytest.approx(rates[("mv2jax", variant)] / best_timm)
    assert set(summary["targets_met"]) >= {"inference_b1_ratio>=1.5", "train_b2_ratio>=1.5", "train_compile_s<=10.0"}


def test_quick_report_measures_the_machine_peaks_and_what_each_target_needs_of_them(run):
    report, printed = run
    machine = next(r for r in report["results"] if r["mode"] == "roofline")
    assert machine["matmul_size"] == 256 and machine["memory_mib_per_array"] == 4
    matmul, memory = machine["matmul_gflops_per_s"], machine["memory_gb_per_s"]
    assert all(_positive(matmul[k]) for k in ("median", "min", "max"))
    assert memory["best"] == max(memory["add_in_place"]["median"], memory["sum"]["median"]) > 0
    roofline, summary = report["summary"]["roofline"], report["summary"]
    for mode, batches in (("inference", BATCH_SIZES), ("train", (TRAIN_BATCH,))):
        for b in batches:
            row, comp = roofline[mode][str(b)], summary[mode][str(b)]
            assert row["variant"] == comp["mv2jax_best"]["variant"]
            assert row["now"]["images_per_s"] == pytest.approx(comp["mv2jax_best"]["images_per_s"])
            assert row["at_target"]["images_per_s"] == pytest.approx(1.5 * comp["timm_best"]["images_per_s"])
            for req in (row["now"], row["at_target"]):
                assert req["gflops_per_s"] == pytest.approx(req["images_per_s"] * row["cost_per_image"]["gflops"])
                assert req["of_matmul_peak"] == pytest.approx(req["gflops_per_s"] / matmul["median"])
    assert "roofline: XLA on these cores reaches" in printed and "at 1.5x timm" in printed


def _result(mode: str, variant: str, batch: int, images_per_s: float, cost: dict | None, side: str = "mv2jax"):
    r = {
        "side": side,
        "mode": mode,
        "variant": variant,
        "batch_size": batch,
        "status": "ok",
        "images_per_s": {"median": images_per_s},
        "compile": {},
    }
    if cost is not None:
        r["compile"]["cost_per_image"] = cost
    return r


def test_roofline_requirements_scale_xla_cost_by_throughput_and_divide_by_the_peaks():
    machine = {"matmul_gflops_per_s": {"median": 200.0}, "memory_gb_per_s": {"best": 40.0}}
    req = requirements(50.0, {"gflops": 2.0, "mib_accessed": 800.0}, machine)
    assert req["gflops_per_s"] == pytest.approx(100.0) and req["of_matmul_peak"] == pytest.approx(0.5)
    assert req["gb_per_s"] == pytest.approx(50 * 800 * 2**20 / 1e9)
    assert req["of_memory_peak"] == pytest.approx(req["gb_per_s"] / 40.0)
    assert "gb_per_s" not in requirements(50.0, {"gflops": 2.0}, machine)


def test_roofline_summary_takes_flops_but_not_bytes_from_another_batch_size_of_the_same_variant():
    results = [
        {
            "side": "mv2jax",
            "mode": "roofline",
            "variant": "xla",
            "batch_size": 0,
            "status": "ok",
            "matmul_gflops_per_s": {"median": 200.0},
            "memory_gb_per_s": {"best": 40.0},
        },
        _result("inference", "fused", 1, 100.0, {"gflops": 0.6, "mib_accessed": 120.0}),
        _result("inference", "fused", 32, 150.0, None),  # a loop: XLA gave no per-image cost
        _result("inference", "eager", 1, 50.0, None, side="timm"),
        _result("inference", "eager", 32, 100.0, None, side="timm"),
    ]
    roofline = summarize(results, (1, 32), None)["roofline"]
    assert roofline["inference"]["1"]["now"]["gb_per_s"] == pytest.approx(100 * 120 * 2**20 / 1e9)
    b32 = roofline["inference"]["32"]
    assert b32["cost_per_image"] == {"gflops": 0.6} and "gb_per_s" not in b32["at_target"]
    assert b32["at_target"]["gflops_per_s"] == pytest.approx(1.5 * 100.0 * 0.6)


def test_quick_loader_phase_measures_the_ra_transform_and_loaders_on_both_sides(run):
    report, printed = run
    assert report["loader_data"]["files_described"] == report["config"]["loader"]["images"] == 8
    assert _positive(report["loader_data"]["mean_height"]) and _positive(report["loader_data"]["mean_kib"])
    assert report["config"]["augment"]["auto_augment"] == "rand-m9-mstd0.5"
    for r in (r for r in report["results"] if r["mode"] == "loader"):
        assert r["status"] == "ok", r.get("error")
        assert r["workers"] == (1 if r["variant"] == "transform" else int(r["variant"].removeprefix("loader_j")))
        assert r["images_per_s_per_worker"] == pytest.approx(r["images_per_s"]["median"] / max(r["workers"], 1))
        assert r["first_run_s"] > 0 and r["images_per_run"] >= 8 and r["img_size"] == 64
    loader = report["summary"]["loader"]
    assert list(loader["per_variant"]) == list(LOADER_VARIANTS)
    for row in loader["per_variant"].values():
        for side in ("mv2jax", "timm"):
            cell = row[side]
            assert all(_positive(cell[k]) for k in ("images_per_s", "images_per_s_per_worker", "over_train_step"))
            train = loader["train_step_best"][side]["images_per_s"]
            assert cell["over_train_step"] == pytest.approx(cell["images_per_s"] / train)
        assert row["mv2jax_over_timm"] == pytest.approx(row["mv2jax"]["images_per_s"] / row["timm"]["images_per_s"])
    assert all(_positive(v) for v in loader["workers_to_feed_train_step"].values())
    assert "data loading: RA train transform (rand-m9-mstd0.5" in printed


def test_phases_flag_selects_by_glob_or_name_part():
    loader = [Phase("mv2jax", "loader", "ra"), Phase("timm", "loader", "ra")]
    assert plan(parse_args(["--quick", "--phases", "loader"])) == loader
    assert plan(parse_args(["--phases", "timm:train:*"])) == [
        Phase("timm", "train", v) for v in ("eager", "channels_last", "channels_last_1thread", "compile")
    ]
    assert plan(parse_args(["--skip-loader", "--phases", "loader"])) == []
    assert plan(parse_args(["--skip-timm", "--phases", "loader"])) == loader[:1]


def test_export_phases_time_the_artifacts_beside_their_peers_with_logits_errors(tmp_path):
    """The deployment phases end to end on a small model: mv2jax's ONNX and timm's own ONNX in ONNX Runtime, and
    mv2jax's LiteRT artifact, reported as skipped where litert-converter is not installed (its own environment)."""
    out = tmp_path / "bench.json"
    phases = ["export:inference:onnx", "export:inference:timm_onnx", "export:inference:tflite", "timm:inference:eager"]
    cmd = [sys.executable, "-m", "mv2jax.benchmark", "--model", "mobilenetv2_035", "--img-size", "32"]
    cmd += ["--batch-sizes", "1", "2", "--repeats", "2", "--skip-train", "--skip-loader", "--output", str(out)]
    proc = subprocess.run([*cmd, "--phases", *phases], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {(r["variant"], r["batch_size"]): r for r in report["results"] if r["side"] == "export"}
    assert set(rows) == {(v, b) for v in ("onnx", "timm_onnx", "tflite") for b in (1, 2)}
    litert = importlib.util.find_spec("litert_converter") is not None
    for (variant, _), r in rows.items():
        if variant == "tflite" and not litert:
            assert r["status"] == "skipped" and "litert_converter is not installed" in r["error"]
            continue
        assert r["status"] == "ok", r.get("error")
        assert _positive(r["images_per_s"]["median"]) and _positive(r["peak_rss_mib"])
        e = r["logits_error"]
        assert 0 < e["artifact"] <= 2 * e["timm_float32"], (variant, e)
    export = report["summary"]["export"]
    for b in ("1", "2"):  # the ratio is the one timed interleaved in the artifact's own phase
        onnx = rows["onnx", int(b)]
        assert onnx["peer"]["variant"] == "timm_onnx" and _positive(onnx["peer"]["images_per_s"]["median"])
        assert len(onnx["peer"]["images_per_s"]["runs"]) == len(onnx["images_per_s"]["runs"]) == 2
        assert export["ratios"][b]["onnx/timm_onnx"] == pytest.approx(
            onnx["images_per_s"]["median"] / onnx["peer"]["images_per_s"]["median"]
        )
    assert "onnx/timm_onnx" in export["interleaved"]
    assert set(export["logits_error"]) == {"onnx", "timm_onnx"} | ({"tflite"} if litert else set())
    assert report["summary"]["targets_met"].keys() >= {"export_b1_onnx/timm_onnx>=0.9", "export_b2_onnx/timm_onnx>=0.9"}
    assert "exported artifacts over their peers" in proc.stdout and "logits error vs timm float64" in proc.stdout


def test_export_summary_holds_each_target_at_its_batch_sizes():
    results = [
        _result("inference", "onnx", 1, 330.0, None, side="export"),
        _result("inference", "onnx", 32, 200.0, None, side="export"),
        _result("inference", "timm_onnx", 1, 300.0, None, side="export"),
        _result("inference", "timm_onnx", 32, 250.0, None, side="export"),
        _result("inference", "compile", 1, 200.0, None, side="timm"),
        _result("inference", "compile", 32, 210.0, None, side="timm"),
    ]
    results[1]["peer"] = {"variant": "timm_onnx", "images_per_s": {"median": 190.0}}  # interleaved at b=32
    summary = summarize(results, (1, 32), None)
    assert summary["export"]["ratios"]["1"] == pytest.approx({"onnx/compile": 1.65, "onnx/timm_onnx": 1.1})
    assert summary["export"]["ratios"]["32"]["onnx/timm_onnx"] == pytest.approx(200 / 190)
    assert summary["export"]["interleaved"] == ["onnx/timm_onnx"]
    assert summary["targets_met"] == {  # no mv2jax side ran: no inference ratio; no LiteRT pair: no target
        "export_b1_onnx/compile>=1.5": True,
        "export_b32_onnx/compile>=1.0": False,  # 200 / 210
        "export_b1_onnx/timm_onnx>=0.9": True,
        "export_b32_onnx/timm_onnx>=0.9": True,  # 200 / 190 interleaved, not 200 / 250 from another phase
    }


def test_markdown_section_is_written_from_the_report(run, bench_dir, tmp_path):
    """`--markdown` appends the run to a BENCHMARKS.md-style file: date, machine, versions, command, one table row
    per measured phase with its median, the ratios and targets; `--from-json` renders the same from the JSON."""
    report, _ = run
    md = (bench_dir / "bench.md").read_text()
    assert md.startswith("# Benchmarks\n\n## Quick run (" + report["date"][:10] + ")")
    m = report["machine"]
    assert f"- Date: {report['date']}" in md and m["cpu_model"] in md
    assert f"jax {m['jax']}" in md and f"timm {m['timm']}" in md and f"Python {m['python']}" in md
    assert report["command"].startswith("python -m mv2jax.benchmark --quick") and f"`{report['command']}`" in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| mode")]
    measured = [r for r in report["results"] if r["mode"] in MODEL_MODES]
    assert len(rows) == len(measured)
    for line, r in zip(rows, measured, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:4] == [r["mode"], r["side"], r["variant"], str(r["batch_size"])]
        assert float(cells[4]) == pytest.approx(r["images_per_s"]["median"], abs=0.05)
    for batch, comp in report["summary"]["inference"].items():
        assert f"inference b={batch}: {comp['ratio']:.2f}x" in md
    assert "- targets: " in md
    saved = bench_dir / "bench.json"
    again = tmp_path / "BENCHMARKS.md"
    again.write_text("# Benchmarks\n\nAn earlier section.\n")
    cmd = [sys.executable, "-m", "mv2jax.benchmark", "--from-json", str(saved), "--markdown", str(again)]
    cmd += ["--title", "Quick run"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert again.read_text() == "# Benchmarks\n\nAn earlier section.\n\n" + md.removeprefix("# Benchmarks\n\n")


def test_a_stopped_benchmark_leaves_the_report_of_the_phases_it_finished(tmp_path, monkeypatch):
    """With --output, the report is rewritten after every phase (marked partial until the last), so an hour of
    accelerator compiles is not lost to a Ctrl-C or a killed job; the finished report is not marked partial."""
    import mv2jax.benchmark as bm
    from mv2jax.bench.markdown import markdown_section

    out = tmp_path / "bench.json"
    args = parse_args(["--skip-timm", "--skip-loader", "--skip-accel", "--output", str(out)])
    phases = plan(args)[:3]
    calls: list[str] = []

    def one_phase(phase, cfg, timeout_s, python=""):
        calls.append(phase.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return bm._failed_phase(phase, cfg, "measured")

    monkeypatch.setattr(bm, "run_isolated", one_phase)
    with pytest.raises(KeyboardInterrupt):
        bm._run_phases(args, bm.config_from_args(args), phases, None, {"date": "today", "command": "the command"})
    saved = json.loads(out.read_text())
    assert saved["date"] == "today" and saved["command"] == "the command"  # as the finished report has them
    assert saved["partial"] and saved["phases_left"] == [p.name for p in phases[1:]]
    assert f"partial: stopped before {phases[1].name}" in format_report(saved)
    assert f"- Partial: stopped before {phases[1].name}" in markdown_section(saved, "Stopped")
    assert {(r["side"], r["mode"], r["variant"]) for r in saved["results"]} == {
        (phases[0].side, phases[0].mode, phases[0].variant)
    }
    assert "partial" not in bm._run_phases(args, bm.config_from_args(args), phases[2:], None, {})
