"""`python -m mv2jax.benchmark --quick` end to end: the JSON report has every field, with sane values, and the
ratios agree with the throughputs. No timing assertions: only that the numbers exist and are consistent."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BATCH_SIZES = (1, 2)
TRAIN_BATCH = 2


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    cmd = [sys.executable, "-m", "mv2jax.benchmark", "--quick", "--batch-sizes", *map(str, BATCH_SIZES),
           "--train-batch-size", str(TRAIN_BATCH), "--output", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mv2jax best / timm best" in proc.stdout
    return json.loads(out.read_text())


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
    expected |= {("mv2jax", "train", f"conv_impl={i}", TRAIN_BATCH) for i in ("cpu", "xla")}
    timm_variants = ("eager", "channels_last", "channels_last_1thread")
    expected |= {("timm", "inference", v, b) for v in timm_variants for b in BATCH_SIZES}
    expected |= {("timm", "train", v, TRAIN_BATCH) for v in timm_variants}
    assert {(r["side"], r["mode"], r["variant"], r["batch_size"]) for r in results} == expected
    for r in results:
        ips = r["images_per_s"]
        assert all(_positive(ips[k]) for k in ("median", "min", "max")), r
        assert ips["min"] <= ips["median"] <= ips["max"] and len(ips["runs"]) == report["config"]["repeats"]
        assert _positive(r["peak_rss_mib"]) and _positive(r["compile"]["first_call_s"])
        if r["side"] == "timm":
            assert r["threads"] == (1 if r["variant"].endswith("_1thread") else report["threads"]["count"])


def test_quick_report_has_xla_compile_memory_and_cost_analyses(report):
    for r in (r for r in report["results"] if r["side"] == "mv2jax"):
        c = r["compile"]
        assert _positive(c["lower_s"]) and _positive(c["compile_s"])
        assert _positive(c["memory_mib"]["argument"]) and c["memory_mib"]["temp"] >= 0
        assert _positive(c["cost_per_image"]["gflops"]) and _positive(c["cost_per_image"]["mib_accessed"])
    xla = {r["mode"]: r["compile"]["cost_per_image"]["gflops"] for r in report["results"]
           if r.get("conv_impl") == "xla" and r["batch_size"] == TRAIN_BATCH}
    assert xla["train"] > 2 * xla["inference"]  # forward + backward (~3x forward)


def test_quick_report_ratios_match_the_throughputs(report):
    results, summary = report["results"], report["summary"]
    for mode, batches in (("inference", BATCH_SIZES), ("train", (TRAIN_BATCH,))):
        for b in batches:
            comp = summary[mode][str(b)]
            rates = {(r["side"], r["variant"]): r["images_per_s"]["median"] for r in results
                     if r["mode"] == mode and r["batch_size"] == b}
            best_timm = max(v for (side, _), v in rates.items() if side == "timm")
            best_mv2 = max(v for (side, _), v in rates.items() if side == "mv2jax")
            assert comp["timm_best"]["images_per_s"] == pytest.approx(best_timm)
            assert comp["mv2jax_best"]["images_per_s"] == pytest.approx(best_mv2)
            assert comp["ratio"] == pytest.approx(best_mv2 / best_timm)
            for variant, ratio in comp["per_variant"].items():
                assert ratio == pytest.approx(rates[("mv2jax", variant)] / best_timm)
    assert set(summary["targets_met"]) >= {"inference_b1_ratio>=1.5", "train_b2_ratio>=1.5", "train_compile_s<=10.0"}
