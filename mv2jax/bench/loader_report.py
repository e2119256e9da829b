"""The loader phases' summary and printed section: RA train transform and loader images/s, mv2jax vs timm,
against the train step's images/s of the same run."""

from __future__ import annotations

from typing import Any

SIDES = ("mv2jax", "timm")


def _ok_loaders(results: list[dict]) -> list[dict]:
    return [r for r in results if r.get("status") == "ok" and r["mode"] == "loader"]


def _variant_order(variant: str) -> tuple[int, int]:
    """'transform' first, then 'loader_j<N>' by N."""
    return (0, 0) if variant == "transform" else (1, int(variant.removeprefix("loader_j")))


def _best_train(results: list[dict], side: str) -> dict[str, Any] | None:
    train = [r for r in results if r.get("status") == "ok" and r["mode"] == "train" and r["side"] == side]
    if not train:
        return None
    r = max(train, key=lambda r: r["images_per_s"]["median"])
    return {"variant": r["variant"], "batch_size": r["batch_size"], "images_per_s": r["images_per_s"]["median"]}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize_loader(results: list[dict]) -> dict[str, Any] | None:
    """Per loader variant: each side's images/s, images/s per worker, mv2jax/timm, and loader / best train step
    of the same side (>= 1: that many workers keep up with the step when they have cores of their own);
    `workers_to_feed_train_step`: best train step images/s / the transform's images/s per worker. None without
    loader results."""
    loaders = _ok_loaders(results)
    if not loaders:
        return None
    train = {side: _best_train(results, side) for side in SIDES}
    per_variant: dict[str, Any] = {}
    for variant in sorted({r["variant"] for r in loaders}, key=_variant_order):
        rec = {
            side: next((r for r in loaders if r["side"] == side and r["variant"] == variant), None) for side in SIDES
        }
        row: dict[str, Any] = {"workers": next(r["workers"] for r in rec.values() if r)}
        for side, r in rec.items():
            ips = r["images_per_s"]["median"] if r else None
            row[side] = {
                "images_per_s": ips,
                "images_per_s_per_worker": r and r["images_per_s_per_worker"],
                "first_run_s": r and r["first_run_s"],
                "over_train_step": _ratio(ips, (train[side] or {}).get("images_per_s")),
            }
        row["mv2jax_over_timm"] = _ratio(row["mv2jax"]["images_per_s"], row["timm"]["images_per_s"])
        per_variant[variant] = row
    transform = per_variant.get("transform", {})
    feed = {
        side: _ratio(
            (train[side] or {}).get("images_per_s"), (transform.get(side) or {}).get("images_per_s_per_worker")
        )
        for side in SIDES
    }
    return {"per_variant": per_variant, "train_step_best": train, "workers_to_feed_train_step": feed}


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _side_cell(cell: dict[str, Any]) -> str:
    return f"{_fmt(cell['images_per_s'], '.1f')} ({_fmt(cell['images_per_s_per_worker'], '.1f')})"


def _header(report: dict[str, Any]) -> list[str]:
    cfg, data = report["config"], report.get("loader_data") or {}
    a = cfg["augment"]
    where = (
        f"{data.get('files_described', '?')} JPEGs, mean {data.get('mean_width', 0):.0f}x"
        f"{data.get('mean_height', 0):.0f} px, {data.get('mean_kib', 0):.0f} KiB ({data.get('source', 'user')})"
    )
    return [
        f"data loading: RA train transform ({a['auto_augment']}, reprob {a['re_prob']} {a['re_mode']}, "
        f"interpolation {a['interpolation']}) -> {cfg['img_size']} px float32, on {where}",
        f"  images/s: median of {cfg['loader']['repeats']} runs of {cfg['loader']['images']} images after one "
        "warm-up run (1st run s: worker start-up + cold caches); torch 1 thread; both sides on the same cores",
        f"  {'variant':<11} {'-j':>3} {'batch':>5} {'mv2jax img/s (/worker)':>24} {'timm img/s (/worker)':>22} "
        f"{'mv2/timm':>8} {'1st run s':>12} {'/train step':>12}",
    ]


def format_loader_section(report: dict[str, Any]) -> list[str]:
    """The printed lines of the loader phases (failed ones as one line each)."""
    summary = report["summary"]["loader"]
    lines = _header(report)
    batches = {r["variant"]: r["batch_size"] for r in _ok_loaders(report["results"])}
    for variant, row in summary["per_variant"].items():
        m, t = row["mv2jax"], row["timm"]
        workers = "-" if variant == "transform" else str(row["workers"])
        first = f"{_fmt(m['first_run_s'], '.1f')}/{_fmt(t['first_run_s'], '.1f')}"
        vs_train = f"{_fmt(m['over_train_step'], '.2f')}/{_fmt(t['over_train_step'], '.2f')}"
        lines.append(
            f"  {variant:<11} {workers:>3} {batches[variant]:>5} {_side_cell(m):>24} {_side_cell(t):>22} "
            f"{_fmt(row['mv2jax_over_timm'], '.2f'):>7}x {first:>12} {vs_train:>12}"
        )
    for r in report["results"]:
        if r["mode"] == "loader" and r.get("status") != "ok":
            lines.append(
                f"  {r['side']} {r['variant']}: {r.get('status', '?').upper()}: "
                f"{r.get('error', '').splitlines()[-1][:100]}"
            )
    train, feed = summary["train_step_best"], summary["workers_to_feed_train_step"]
    for side in SIDES:
        if train[side]:
            lines.append(
                f"  {side} train step (best, b={train[side]['batch_size']}, {train[side]['variant']}): "
                f"{train[side]['images_per_s']:.1f} img/s = {_fmt(feed[side], '.2f')} transform workers"
            )
    lines.append(
        "  /train step: loader img/s over the same side's best train step img/s (mv2jax/timm); >= 1 keeps "
        "up only if the workers get cores of their own"
    )
    return lines
