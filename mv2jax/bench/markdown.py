"""A benchmark run as a BENCHMARKS.md section, written from its JSON report: the date, the machine, the versions,
the command, the table of every phase, the ratios, the targets and the exported artifacts' errors.
`python -m mv2jax.benchmark --markdown BENCHMARKS.md` appends it after a run; `--from-json REPORT` renders a saved
report without measuring anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mv2jax.bench.accel_report import markdown_accel_lines
from mv2jax.bench.common import CORE_PACKAGES, MODEL_MODES, OPTIONAL_PACKAGES
from mv2jax.bench.report import row_figures
from mv2jax.io import write_atomic


def _num(value: float | None, spec: str = ".1f") -> str:
    return "" if value is None else format(value, spec)


def versions(machine: dict[str, Any]) -> str:
    """The installed versions `machine_info` recorded, as 'jax 0.10.2, flax ...' (absent packages left out)."""
    names = CORE_PACKAGES + OPTIONAL_PACKAGES
    return ", ".join(f"{n} {machine[n]}" for n in names if machine.get(n))


def _phase_row(r: dict[str, Any], summary: dict[str, Any]) -> str:
    head = f"| {r['mode']} | {r['side']} | {r['variant']} | {r['batch_size']} |"
    if r.get("status") != "ok":
        error = (r.get("error") or "").splitlines()[-1:] or [""]
        return f"{head} {r.get('status', '?')}: {error[0][:80].replace('|', '/')} | | | | | |"
    ips = r["images_per_s"]
    ratio, aot = row_figures(r, summary)
    return (
        f"{head} {ips['median']:.1f} | {ips['min']:.1f}-{ips['max']:.1f} | {ips['spread_pct']:.0f}% | "
        f"{_num(ratio, '.2f')} | {_num(aot)} | {r['peak_rss_mib']:.0f} |"
    )


def markdown_section(report: dict[str, Any], title: str) -> str:
    """The section for `report` (as `python -m mv2jax.benchmark --output` writes it), headed `title (date)`."""
    m, cfg, summary = report["machine"], report["config"], report["summary"]
    date = report.get("date", "undated")[:10]
    lines = [
        f"## {title} ({date})",
        "",
        f"- Date: {report.get('date', 'not recorded')}",
        f"- Machine: {m['cpu_model']}, {m['cores_available']} cores available; threads: "
        f"{report['threads']['description']}; host memory: {report.get('host_memory', '-')}; load average "
        f"before/after: {report['load_before']} / {report['load_after']}",
        f"- Versions: Python {m['python']}, {versions(m)}",
        f"- Command: `{report.get('command', 'not recorded')}`",
        f"- Model: {cfg['model']} at {cfg['img_size']}x{cfg['img_size']}, float32; medians of {cfg['repeats']} timed "
        f"runs; conv_impl auto -> {report['conv_impl_auto']}",
        *([f"- Partial: stopped before {', '.join(report['phases_left'])}"] if report.get("partial") else []),
    ]
    model_rows = [_phase_row(r, summary) for r in report["results"] if r["mode"] in MODEL_MODES]
    if model_rows:  # none when only other phases ran (--phases accel)
        lines += [
            "",
            "| mode | side | variant | batch | img/s | min-max | spread | / timm best | compile s | RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *model_rows,
        ]
    notes = [
        f"{mode} b={batch}: {comp['ratio']:.2f}x ({comp['mv2jax_best']['variant']} / {comp['timm_best']['variant']})"
        for mode in MODEL_MODES
        for batch, comp in summary.get(mode, {}).items()
        if comp.get("ratio") is not None
    ]
    notes = ["mv2jax best / timm best: " + "; ".join(notes)] if notes else []
    export = summary.get("export") or {"ratios": {}, "logits_error": {}}
    together = export.get("interleaved")
    interleaved = f" ({', '.join(together)} timed interleaved in one process)" if together else ""
    for batch, pairs in export["ratios"].items():
        listed = ", ".join(f"{k} {v:.2f}x" for k, v in pairs.items())
        notes.append(f"exported artifacts over their peers, b={batch}{interleaved}: {listed}")
    errors = export["logits_error"]
    if errors:
        timm_own = next(iter(errors.values()))["timm_float32"]
        listed = ", ".join(f"{variant} {e['artifact']:.2e}" for variant, e in errors.items())
        notes.append(
            f"logits error vs timm float64 (max|diff| / max|ref|; timm's own float32 {timm_own:.2e}): {listed}"
        )
    targets = summary.get("targets_met", {})
    if targets:
        notes.append("targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in targets.items()))
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    lines += markdown_accel_lines(report)
    return "\n".join(lines) + "\n"


def append_markdown(path: str | Path, section: str) -> None:
    """Append `section` to `path` (created with a heading if missing), atomically."""
    path = Path(path)
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    write_atomic(path, (old.rstrip("\n") + "\n\n" + section).encode())


def append_section(path: str | Path, report: dict[str, Any], title: str) -> None:
    """Append the benchmark's section for `report` to `path` (created with a heading if missing), atomically."""
    append_markdown(path, markdown_section(report, title))
