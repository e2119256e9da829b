"""The accelerator phases' summary, printed lines and BENCHMARKS.md lines: per target and precision, the RA train
step's analyses per chip, mv2jax over the textbook Flax reference, the largest per-chip batch, and "feeding the
chip": how many loader workers the RA train transform needs to keep one chip at its roofline, from the loader
phase's measured images/s per worker."""

from __future__ import annotations

import math
from typing import Any

GIB = 1 << 30
# vCPUs per TPU chip of the VM types Google lists (vCPUs per VM / chips per VM), where a source gives them.
HOST_VCPUS_PER_CHIP: dict[str, tuple[int, str]] = {
    "v5e": (28, "112 vCPUs per 4-chip VM (ct5lp-hightpu-4t), https://cloud.google.com/tpu/docs/v5e"),
    "v5p": (52, "208 vCPUs per 4-chip VM, https://cloud.google.com/tpu/docs/v5p"),
}
TYPICAL_HOST = "TPU hosts have ~28-60 vCPUs per chip (typical)"
ROOFLINE_RULE = "roofline img/s per chip = batch / max(flops / bf16 peak, HBM bytes / bandwidth), the chip's published"


def _transform_per_worker(loader: dict[str, Any] | None) -> float | None:
    """mv2jax's RA train transform, images/s of one worker (the loader phase's 'transform' variant)."""
    transform = ((loader or {}).get("per_variant") or {}).get("transform") or {}
    return (transform.get("mv2jax") or {}).get("images_per_s_per_worker")


def summarize_accel(results: list[dict], loader: dict[str, Any] | None) -> dict[str, Any] | None:
    """Per accel variant: mv2jax's roofline img/s per chip and the loader workers that feed it, ceil(roofline /
    the RA transform's img/s per worker); with the host vCPUs per chip Google lists for that generation. None
    without accel rows."""
    rows = [r for r in results if r["mode"] == "accel"]
    if not rows:
        return None
    per_worker = _transform_per_worker(loader)
    per_target: dict[str, Any] = {}
    for r in rows:
        if r.get("status") != "ok":
            continue
        roof = r["mv2jax"].get("roofline_images_per_s")
        vcpus = HOST_VCPUS_PER_CHIP.get(r["chip"]["name"]) if r["platform"] == "tpu" else None
        per_target[r["variant"]] = {
            "roofline_images_per_s": roof,
            "loader_workers_per_chip": math.ceil(roof / per_worker) if roof and per_worker else None,
            "host_vcpus_per_chip": vcpus[0] if vcpus else None,
        }
    return {"transform_images_per_s_per_worker": per_worker, "per_target": per_target}


def _num(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value / scale, spec)


def _size(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x / GIB:.2f} GiB" if x >= GIB else f"{x / (1 << 20):.0f} MiB"


def _ratio(ratios: dict[str, Any] | None, key: str) -> str:
    value = (ratios or {}).get(key)
    return "-" if value is None else f"{value:.2f}x"


def _largest(largest: dict[str, Any] | None, capacity: int | None) -> str:
    """The largest batch per chip and the share of the chip's memory it uses ('2045 (94%)'), and the smallest batch
    compiled that did not fit when the search stopped short of it ('1410 (92%), 2767 not')."""
    if not largest:
        return "-"
    if not largest["batch_per_chip"]:
        return "none"
    batch, used = largest["batch_per_chip"], largest.get("total_bytes")
    from mv2jax.accel.compile_only import REFINE_WITHIN

    cell = f"{batch} ({used / capacity:.0%})" if used and capacity else str(batch)
    over = min((b for b in largest.get("batches_compiled", []) if b > batch), default=None)  # none of them fit
    if over and over - batch > REFINE_WITHIN * batch + 1:
        cell += f", {over} not"
    return cell


def _cells(r: dict[str, Any], feed: dict[str, Any]) -> list[str]:
    m, ref, ratios = r["mv2jax"], r.get("reference") or {}, r.get("mv2jax_over_reference")
    largest = r.get("largest_batch")
    convs = f"{m.get('cudnn_convolutions', '-')}/{m.get('xla_convolutions', '-')}" if r["platform"] == "cuda" else "-"
    return [
        r["target"],
        r["precision"],
        str(r["batch_size"]),
        _num(m.get("flops_per_image"), ".2f", 1e9),
        _num(m.get("hbm_bytes_per_image"), ".0f", 1e6),
        _size(m.get("temp_bytes")),
        f"{_size(m.get('total_bytes'))} / {_size(m.get('capacity_bytes'))}",
        str(m.get("fusions", "-")),
        convs,
        _num(m.get("roofline_images_per_s"), ",.0f"),
        _num(ref.get("hbm_bytes_per_image"), ".0f", 1e6),
        _size(ref.get("temp_bytes")) if ref else "-",
        str(ref.get("fusions", "-")),
        _ratio(ratios, "hbm_bytes"),
        _ratio(ratios, "temp_bytes"),
        _ratio(ratios, "fusions"),
        _largest(largest, m.get("capacity_bytes")),
        str(feed.get("loader_workers_per_chip") or "-"),
        f"{m['compile_s']:.0f}/{_num(ref.get('compile_s'), '.0f')}",
    ]


HEADER = [
    "target",
    "precision",
    "batch/chip",
    "GFLOP/img",
    "HBM MB/img",
    "temporaries",
    "memory / chip",
    "fusions",
    "cuDNN/XLA convs",
    "roofline img/s/chip",
    "ref HBM MB/img",
    "ref temporaries",
    "ref fusions",
    "bytes vs ref",
    "temp vs ref",
    "fusions vs ref",
    "largest batch/chip",
    "loader workers/chip",
    "compile s (ours/ref)",
]


def _notes(report: dict[str, Any]) -> list[str]:
    """The lines under the table: what the columns mean, sources, versions, feeding the chip, skipped phases."""
    rows = [r for r in report["results"] if r["mode"] == "accel"]
    ok = [r for r in rows if r.get("status") == "ok"]
    summary = report["summary"].get("accel") or {}
    notes = []
    if ok:
        r = ok[0]
        notes.append(
            f"RA train step of {r['model']} at {r['img_size']} px (train.py's, conv_impl 'xla'; bf16 = --amp) "
            f"compiled per target; 'ref' is the textbook Flax step (mv2jax/bench/reference_flax.py) compiled in the "
            f"same process; vs ref = mv2jax / reference per chip and step"
        )
        sources = sorted({f"{x['chip']['name']}: {x['chip']['source']}" for x in ok})
        notes.append(f"{ROOFLINE_RULE} figures ({'; '.join(sources)})")
        versions = sorted({", ".join(f"{k} {v}" for k, v in x["versions"].items()) for x in ok})
        notes.append("compiled with " + " | ".join(versions))
        notes += sorted({n for x in ok for n in x.get("notes", [])})
        if any(x.get("largest_batch") for x in ok):
            from mv2jax.accel.compile_only import REFINE_COMPILES, REFINE_WITHIN

            notes.append(
                "largest batch/chip (in brackets, the share of the chip's memory it uses): a second compile gives "
                "a line of memory (state + temporaries) against the batch; its crossing with the chip's memory is "
                "compiled and refined by the secant (where memory fell as the batch grew, by the fit's temporaries "
                f"scaled to the capacity), at most {REFINE_COMPILES} more compiles, until within "
                f"{REFINE_WITHIN:.0%} of the batch or of the memory; 'N not': the smallest batch compiled that did not "
                "fit, where the compiles ran out before the search narrowed to it (the largest batch is between)"
            )
    notes += _feeding(summary)
    for r in rows:
        if r.get("status") != "ok":
            error = (r.get("error") or "").strip().splitlines()[-1:] or [""]
            notes.append(f"{r['variant']}: {r.get('status', '?')}: {error[0][:300]}")
    return notes


def _feeding(summary: dict[str, Any]) -> list[str]:
    """Feeding the chip: loader workers per chip at each target's roofline."""
    per_worker, targets = summary.get("transform_images_per_s_per_worker"), summary.get("per_target") or {}
    if not targets:
        return []
    if per_worker is None:
        return [
            "feeding the chip: run the loader phase in the same run (--phases accel loader) for the loader "
            f"workers one chip needs at its roofline; {TYPICAL_HOST}"
        ]
    parts = [
        f"{variant} {t['loader_workers_per_chip']} workers for {t['roofline_images_per_s']:,.0f} img/s"
        + (f" (its hosts: {t['host_vcpus_per_chip']} vCPUs per chip)" if t["host_vcpus_per_chip"] else "")
        for variant, t in targets.items()
        if t["loader_workers_per_chip"]
    ]
    listed = "; ".join(f"{gen}: {v} ({src})" for gen, (v, src) in HOST_VCPUS_PER_CHIP.items())
    return [
        f"feeding the chip: mv2jax's RA train transform runs at {per_worker:.1f} img/s per worker on this "
        f"machine's cores (loader phase), so one chip at its roofline needs ceil(roofline / {per_worker:.1f}) "
        f"workers, each a core of its own: {'; '.join(parts)}",
        f"{TYPICAL_HOST}; {listed}",
    ]


def format_accel_section(report: dict[str, Any]) -> list[str]:
    """The printed lines: an aligned table, then the notes."""
    feed = (report["summary"].get("accel") or {}).get("per_target") or {}
    ok = [r for r in report["results"] if r["mode"] == "accel" and r.get("status") == "ok"]
    rows = [HEADER] + [_cells(r, feed.get(r["variant"], {})) for r in ok]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = ["accelerators (compile-only; per chip and train step):"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return lines + [f"  {note}" for note in _notes(report)]


def markdown_accel_lines(report: dict[str, Any]) -> list[str]:
    """The BENCHMARKS.md lines: a table, then the notes as bullets; none without accel rows."""
    if not any(r["mode"] == "accel" for r in report["results"]):
        return []
    feed = (report["summary"].get("accel") or {}).get("per_target") or {}
    ok = [r for r in report["results"] if r["mode"] == "accel" and r.get("status") == "ok"]
    lines = ["", "Accelerators (compile-only; per chip and train step):", ""]
    if ok:
        lines += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(_cells(r, feed.get(r["variant"], {}))) + " |" for r in ok]
        lines.append("")
    return lines + [f"- {note.replace('|', '/')}" for note in _notes(report)]
