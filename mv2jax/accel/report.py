"""`compile_check`'s report as the text train.py's `--compile-only` prints: per chip, one column per step."""

from __future__ import annotations

from typing import Any

GIB = 1 << 30


def _gib(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x / GIB:.2f} GiB" if x >= GIB else f"{x / (1 << 20):.1f} MiB"


def _rows(steps: dict[str, dict[str, Any]], platform: str) -> list[tuple[str, list[str]]]:
    def col(fn) -> list[str]:
        return [fn(s) for s in steps.values()]

    def per_image(key: str, scale: float, unit: str):
        return lambda s: "-" if s.get(key) is None else f"{s[key] / scale:.3g} {unit}"

    rows = [
        ("batch per chip", col(lambda s: str(s["batch_per_device"]))),
        ("state (arguments)", col(lambda s: _gib(s["state_bytes"]))),
        ("temporaries", col(lambda s: _gib(s["temp_bytes"]))),
        (
            "total / capacity",
            col(
                lambda s: (
                    "does not compile: " + s["out_of_memory"]
                    if s["out_of_memory"]
                    else f"{_gib(s['total_bytes'])} / {_gib(s['capacity_bytes'])} "
                    f"({100 * s['total_bytes'] / s['capacity_bytes']:.0f}%) {'fits' if s['fits'] else 'DOES NOT FIT'}"
                )
            ),
        ),
        ("flops per image", col(per_image("flops_per_image", 1e9, "GFLOP"))),
        ("HBM bytes per image", col(per_image("hbm_bytes_per_image", 1e6, "MB"))),
        (
            "roofline img/s per chip",
            col(lambda s: "-" if not s.get("roofline_images_per_s") else f"{s['roofline_images_per_s']:,.0f}"),
        ),
        ("fusions", col(lambda s: str(s.get("fusions", "-")))),
    ]
    if platform == "cuda":
        rows.append(("cuDNN convolutions", col(lambda s: str(s.get("cudnn_convolutions", "-")))))
        rows.append(("XLA convolutions", col(lambda s: str(s.get("xla_convolutions", "-")))))
    rows.append(("compile time", col(lambda s: f"{s['compile_s']:.0f} s")))
    return rows


def format_report(report: dict[str, Any]) -> str:
    chip, steps = report["chip"], report["steps"]
    c, h, w = report["image_size"]
    precision = "bf16 compute (--amp)" if report["amp"] else "fp32"
    lines = [
        f"Compile-only: {report['target']} = {report['devices']} x {chip['description']} on {report['hosts']} "
        f"host(s); {report['model']} {h}x{w}x{c}, {precision}, {report['num_classes']} classes, "
        f"--conv-impl {report['conv_impl']}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
    ]
    rows = _rows(steps, report["platform"])
    width = max(len(name) for name, _ in rows)
    widths = [max(len(v) for v in values) for values in zip(*(vals for _, vals in rows), strict=True)]
    header = [f"{name} step" for name in steps]
    lines.append(" " * (width + 2) + "  ".join(t.ljust(n) for t, n in zip(header, widths, strict=True)).rstrip())
    for name, values in rows:
        lines.append(
            f"  {name.ljust(width)}  " + "  ".join(v.ljust(n) for v, n in zip(values, widths, strict=True)).rstrip()
        )
    lines.append(
        f"roofline: batch / max(flops / {chip['peak_bf16_flops'] / 1e12:.0f} TFLOP/s bf16 peak, bytes / "
        f"{chip['memory_bandwidth'] / 1e9:.0f} GB/s), per {chip['source']}"
    )
    lines += [f"note: {n}" for n in report["notes"]]
    lines.append(_verdict(report))
    return "\n".join(lines)


def _verdict(report: dict[str, Any]) -> str:
    if report["fits"]:
        return f"fits: both steps fit in {report['target']}'s memory"
    parts = []
    for flag, batch in report["largest_batch"].items():
        if batch is None:
            parts.append(f"{flag}: not even 1 per chip fits")
        else:
            parts.append(f"the largest per-chip batch that fits is {flag} {batch}")
    return "DOES NOT FIT: " + ("; ".join(parts) if parts else "a step exceeds the chip's memory")
