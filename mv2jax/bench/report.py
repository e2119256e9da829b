"""Summary (best of each side, ratios, the project's targets) and the printed table of a benchmark run; the
loader phases' part of both is in `loader_report`."""

from __future__ import annotations

from typing import Any

from mv2jax.bench.accel_report import format_accel_section, summarize_accel
from mv2jax.bench.common import MODEL_MODES
from mv2jax.bench.loader_report import format_loader_section, summarize_loader
from mv2jax.bench.roofline import requirements

# The project's targets: mv2jax / timm-best throughput ratios, and the train-step compile budget (seconds).
TARGET_INFER_RATIO = 1.5
TARGET_TRAIN_RATIO = 1.5
TARGET_TRAIN_COMPILE_S = 10.0
_TARGET_RATIOS = {"inference": TARGET_INFER_RATIO, "train": TARGET_TRAIN_RATIO}
# Deployment: (artifact, its peer, the least ratio per batch size; None for every batch size).
EXPORT_TARGETS = (
    ("onnx", "timm:compile", {1: 1.5, 32: 1.0}),  # mv2jax's ONNX in ONNX Runtime vs timm torch.compile
    ("onnx", "export:timm_onnx", {None: 0.9}),  # vs timm's own ONNX of the same network
    ("tflite", "export:timm_tflite", {None: 0.9}),  # vs litert-torch's conversion of timm's model
)


def _ok(results: list[dict], **match: Any) -> list[dict]:
    return [r for r in results if r.get("status") == "ok" and all(r.get(k) == v for k, v in match.items())]


def _best(results: list[dict]) -> dict[str, Any] | None:
    if not results:
        return None
    r = max(results, key=lambda r: r["images_per_s"]["median"])
    return {"variant": r["variant"], "images_per_s": r["images_per_s"]["median"]}


def _compare(results: list[dict], mode: str, batch: int) -> dict[str, Any]:
    """Best mv2jax and best timm at one (mode, batch), their ratio, and each mv2jax variant's ratio."""
    mv2, timm = (
        _ok(results, side="mv2jax", mode=mode, batch_size=batch),
        _ok(results, side="timm", mode=mode, batch_size=batch),
    )
    out: dict[str, Any] = {"mv2jax_best": _best(mv2), "timm_best": _best(timm), "ratio": None, "per_variant": {}}
    if out["timm_best"]:
        base = out["timm_best"]["images_per_s"]
        out["per_variant"] = {r["variant"]: r["images_per_s"]["median"] / base for r in mv2}
        if out["mv2jax_best"]:
            out["ratio"] = out["mv2jax_best"]["images_per_s"] / base
    return out


def _cost_per_image(results: list[dict], mode: str, variant: str, batch: int) -> dict[str, float] | None:
    """XLA's cost per image of an mv2jax variant at `batch`. Where XLA could not count it (the fused network's
    loop over groups of images), the flops per image from another batch size of the same variant (they do not
    depend on the batch; the bytes do, so those are left out)."""
    runs = [r for r in _ok(results, side="mv2jax", mode=mode, variant=variant) if "cost_per_image" in r["compile"]]
    same = [r for r in runs if r["batch_size"] == batch]
    if same:
        return same[0]["compile"]["cost_per_image"]
    return {"gflops": runs[0]["compile"]["cost_per_image"]["gflops"]} if runs else None


def _roofline(results: list[dict], summary: dict[str, Any]) -> dict[str, Any] | None:
    """For each compared (mode, batch): what mv2jax's best variant uses of the machine's peaks now, and what it
    would need at the target ratio (`mv2jax.bench.roofline.requirements`)."""
    machine = _ok(results, mode="roofline")
    if not machine:
        return None
    out: dict[str, Any] = {"machine": {k: machine[0][k] for k in ("matmul_gflops_per_s", "memory_gb_per_s")}}
    for mode, target in _TARGET_RATIOS.items():
        for batch, comp in summary.get(mode, {}).items():
            best, timm = comp["mv2jax_best"], comp["timm_best"]
            cost = best and _cost_per_image(results, mode, best["variant"], int(batch))
            if cost is None or timm is None:
                continue
            out.setdefault(mode, {})[batch] = {
                "variant": best["variant"],
                "cost_per_image": cost,
                "now": requirements(best["images_per_s"], cost, machine[0]),
                "at_target": requirements(target * timm["images_per_s"], cost, machine[0]),
            }
    return out


def _export_summary(results: list[dict], batch_sizes: tuple[int, ...], targets: dict[str, bool]) -> dict[str, Any]:
    """Each artifact's throughput over its peer's at every batch size (`EXPORT_TARGETS`; the targets met go into
    `targets`), and each artifact's logits error against timm in float64 beside timm's own float32 error. A peer
    timed interleaved in the artifact's own phase (`peer`) gives the ratio; else the peer's phase does."""
    ok = _ok(results, mode="inference")
    speed = {(f"{r['side']}:{r['variant']}", r["batch_size"]): r["images_per_s"]["median"] for r in ok}
    interleaved = {
        (f"export:{r['variant']}", f"export:{r['peer']['variant']}", r["batch_size"]): (
            r["images_per_s"]["median"],
            r["peer"]["images_per_s"]["median"],
        )
        for r in ok
        if "peer" in r
    }
    ratios: dict[str, dict[str, float]] = {}
    same_process: set[str] = set()
    for artifact, peer, least in EXPORT_TARGETS:
        for b in batch_sizes:
            key = f"{artifact}/{peer.split(':')[1]}"
            if (f"export:{artifact}", peer, b) in interleaved:
                ours, theirs = interleaved[f"export:{artifact}", peer, b]
                same_process.add(key)
            else:
                ours, theirs = speed.get((f"export:{artifact}", b)), speed.get((peer, b))
            if ours is None or theirs is None:
                continue
            ratios.setdefault(str(b), {})[key] = ours / theirs
            bound = least.get(b, least.get(None))
            if bound is not None:
                targets[f"export_b{b}_{key}>={bound}"] = ours / theirs >= bound
    errors = {r["variant"]: r["logits_error"] for r in _ok(results, side="export") if "logits_error" in r}
    return {"ratios": ratios, "interleaved": sorted(same_process), "logits_error": errors} if ratios or errors else {}


def summarize(results: list[dict], batch_sizes: tuple[int, ...], train_batch: int | None) -> dict[str, Any]:
    """Ratios (mv2jax best / timm best, > 1 means mv2jax is faster) and whether the project's targets are met."""
    summary: dict[str, Any] = {"inference": {str(b): _compare(results, "inference", b) for b in batch_sizes}}
    targets: dict[str, Any] = {}
    for b, comp in summary["inference"].items():
        if comp["ratio"] is not None:
            targets[f"inference_b{b}_ratio>={TARGET_INFER_RATIO}"] = comp["ratio"] >= TARGET_INFER_RATIO
    if train_batch is not None:
        comp = _compare(results, "train", train_batch)
        summary["train"] = {str(train_batch): comp}
        if comp["ratio"] is not None:
            targets[f"train_b{train_batch}_ratio>={TARGET_TRAIN_RATIO}"] = comp["ratio"] >= TARGET_TRAIN_RATIO
        # the compile of the variant that trains fastest (the one a user runs), lower() + compile(), cold
        best = comp["mv2jax_best"]
        runs = [r for r in _ok(results, side="mv2jax", mode="train") if best and r["variant"] == best["variant"]]
        if runs and "compile_s" in runs[0]["compile"]:
            c = runs[0]["compile"]
            comp["mv2jax_compile_s"] = {"cold": c["lower_s"] + c["compile_s"], "cached": c.get("cached_s")}
            targets[f"train_compile_s<={TARGET_TRAIN_COMPILE_S}"] = (
                comp["mv2jax_compile_s"]["cold"] <= TARGET_TRAIN_COMPILE_S
            )
    export = _export_summary(results, batch_sizes, targets)
    if export:
        summary["export"] = export
    summary["targets_met"] = targets
    loader = summarize_loader(results)
    if loader is not None:
        summary["loader"] = loader
    roofline = _roofline(results, summary)
    if roofline is not None:
        summary["roofline"] = roofline
    accel = summarize_accel(results, loader)
    if accel is not None:
        summary["accel"] = accel
    return summary


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def row_figures(r: dict, summary: dict) -> tuple[float | None, float | None]:
    """(throughput over timm's best at the same mode and batch, lower()+compile() seconds) of an ok result."""
    comp = summary.get(r["mode"], {}).get(str(r["batch_size"]), {})
    timm_best = (comp.get("timm_best") or {}).get("images_per_s")
    c = r.get("compile", {})
    aot = c["lower_s"] + c["compile_s"] if "compile_s" in c else None
    return (r["images_per_s"]["median"] / timm_best if timm_best else None), aot


def _row(r: dict, summary: dict) -> str:
    head = f"{r['mode']:<9} {r['side']:<6} {r['variant']:<22} {r['batch_size']:>5}"
    if r.get("status") != "ok":
        return f"{head}  {r.get('status', '?').upper()}: {r.get('error', '').splitlines()[-1][:90]}"
    ips = r["images_per_s"]
    ratio, aot = row_figures(r, summary)
    c = r.get("compile", {})
    temp = c.get("memory_mib", {}).get("temp")
    return (
        f"{head} {ips['median']:>9.2f} {ips['min']:>8.2f}-{ips['max']:<8.2f} {ips['spread_pct']:>5.1f}% "
        f"{_fmt(ratio, '.2f'):>6} {c.get('first_call_minus_steady_s', 0.0):>8.1f} {_fmt(aot):>8} "
        f"{_fmt(c.get('cached_s')):>8} {r['peak_rss_mib']:>8.0f} {_fmt(temp):>8}"
    )


def _cost_lines(results: list[dict]) -> list[str]:
    lines = []
    for r in _ok(results, side="mv2jax"):
        if r["mode"] not in MODEL_MODES:
            continue
        cost = r["compile"].get("cost_per_image")
        if cost:
            lines.append(
                f"  {r['mode']:<9} {r['variant']:<22} b={r['batch_size']:<3} "
                f"{cost['gflops']:.3f} GFLOP/image, {cost['mib_accessed']:.1f} MiB accessed/image"
            )
    return lines


def _needs(req: dict[str, float]) -> str:
    text = f"{req['images_per_s']:.1f} img/s: {req['gflops_per_s']:.0f} GFLOP/s ({req['of_matmul_peak']:.0%})"
    return text + (f", {req['gb_per_s']:.1f} GB/s ({req['of_memory_peak']:.0%})" if "gb_per_s" in req else "")


def _roofline_lines(roofline: dict[str, Any]) -> list[str]:
    m = roofline["machine"]
    lines = [
        f"roofline: XLA on these cores reaches {m['matmul_gflops_per_s']['median']:.0f} GFLOP/s (fp32 "
        f"matmul) and {m['memory_gb_per_s']['best']:.1f} GB/s (memory); mv2jax's best variant uses, of those "
        "peaks (XLA's flops and bytes accessed per image x images/s; bytes include cache hits):"
    ]
    for mode, target in _TARGET_RATIOS.items():
        for batch, row in roofline.get(mode, {}).items():
            lines.append(f"  {mode:<9} b={batch:<3} {row['variant']:<22} now {_needs(row['now'])}")
            lines.append(f"  {'':<38} at {target:g}x timm {_needs(row['at_target'])}")
    return lines


def _lowering_lines(results: list[dict]) -> list[str]:
    """The train step lowered for each accelerator (conv_impl 'xla'): its most frequent StableHLO ops."""
    lines = []
    for r in _ok(results, mode="lowering"):
        ops = ", ".join(f"{op.split('.', 1)[-1]} {n}" for op, n in list(r["ops"].items())[:12])
        extra = f"; control flow {r['control_flow']}" if r["control_flow"] else ""
        extra += f"; custom calls {r['custom_calls']}" if r["custom_calls"] else ""
        lines.append(f"  {r['platform']:<5} {r['name']}: {ops}{extra}")
    return ["", "train step lowered for accelerators (op histogram, most frequent first):", *lines] if lines else []


def _export_lines(export: dict[str, Any]) -> list[str]:
    lines = ["", "exported artifacts over their peers (images/s):"]
    if export.get("interleaved"):
        lines[-1] += f" {', '.join(export['interleaved'])} timed interleaved in one process"
    for batch, ratios in export["ratios"].items():
        lines.append(f"  b={batch:<3} " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    lines.append("logits error vs timm float64 (max|diff| / max|ref|; the bound is 2x timm's own float32 error):")
    for variant, e in export["logits_error"].items():
        verdict = "ok" if e["artifact"] <= 2 * e["timm_float32"] else "OVER 2x"
        lines.append(f"  {variant:<14} {e['artifact']:.2e}  (timm float32 {e['timm_float32']:.2e}: {verdict})")
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table of a run (`report` as written to the JSON file; a partial one says so)."""
    m, results, summary = report["machine"], report["results"], report["summary"]
    lines = [
        f"mv2jax benchmark: {report['config']['model']} @ {report['config']['img_size']}px, fp32",
        f"machine: {m['cpu_model']}, {m['cores_available']} cores; threads: {report['threads']['description']}",
        f"versions: jax {m['jax']}, flax {m['flax']}, torch {m['torch']}, timm {m['timm']}; "
        f"conv_impl auto -> {report['conv_impl_auto']}; train step: {report.get('step_impl') or '-'}",
        f"host memory (both sides): {report.get('host_memory', '-')}",
        f"load average before/after: {report['load_before']} / {report['load_after']}",
        *([f"partial: stopped before {', '.join(report['phases_left'])}"] if report.get("partial") else []),
        "",
        f"{'mode':<9} {'side':<6} {'variant':<22} {'batch':>5} {'img/s':>9} {'min-max':^17} {'sprd':>6} "
        f"{'/timm':>6} {'jit1st s':>8} {'AOT s':>8} {'cached s':>8} {'RSS MiB':>8} {'XLAtmp':>8}",
    ]
    lines += [_row(r, summary) for r in results if r["mode"] in MODEL_MODES]
    lines += ["", "mv2jax best / timm best (images/s):"]
    for mode in MODEL_MODES:
        for batch, comp in summary.get(mode, {}).items():
            mb, tb = comp["mv2jax_best"] or {}, comp["timm_best"] or {}
            if not (mb or tb):  # that mode did not run (--phases)
                continue
            lines.append(
                f"  {mode:<9} b={batch:<3} {_fmt(mb.get('images_per_s'), '.2f')} ({mb.get('variant', '-')})"
                f" / {_fmt(tb.get('images_per_s'), '.2f')} ({tb.get('variant', '-')})"
                f" = {_fmt(comp['ratio'], '.2f')}x"
            )
    if "export" in summary:
        lines += _export_lines(summary["export"])
    if "loader" in summary:
        lines += [""] + format_loader_section(report)
    lines += ["", "XLA cost analysis per image:"] + _cost_lines(results)
    if "roofline" in summary:
        lines += [""] + _roofline_lines(summary["roofline"])
    lines += _lowering_lines(results)
    if any(r["mode"] == "accel" for r in results):
        lines += [""] + format_accel_section(report)
    met = summary["targets_met"].items()
    lines += ["", "targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in met)]
    lines += [
        "columns: jit1st s = first call minus steady step (trace+compile); AOT s = lower()+compile() after "
        "clearing caches; cached s = the same read from JAX's persistent compilation cache (what a rerun "
        "pays); RSS = process high-water mark (fresh process per phase); XLAtmp = XLA temp buffers"
    ]
    return "\n".join(lines)
