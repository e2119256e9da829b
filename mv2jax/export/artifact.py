"""Writing and reading exported artifacts: the formats, the JSON sidecar that says how to preprocess for them, the
atomic write, and a runner that feeds an artifact NHWC batches whatever its layout.

The sidecar `FILE.json` (`schema` 2) holds `format`, `model` (`architecture.tag` for timm's published weights, else
the architecture), `source` (where the weights came from: a file, a train.py step directory, a Hub repo),
`mv2jax_version`, `input_size` (C, H, W), `layout` ('nchw' or 'nhwc'), `batch_size` (null: any), `mean`/`std` (per
channel, for pixels scaled to [0, 1]), `crop_pct`, `crop_mode`, `interpolation`, `num_classes` (0: the output is
pooled features) and `class_names` (one per class index, or null where unknown). Schema 1 sidecars (no `schema`;
`labels` 'imagenet-1k' or null instead of `class_names`) are read as schema 2.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import mv2jax
from mv2jax.convert.files import refuse_existing, sibling
from mv2jax.data.imagenet import imagenet_class_names
from mv2jax.models import MobileNetV2

SIDECAR_SCHEMA = 2
IMAGENET_1K = "imagenet-1k"  # schema 1's `labels` for ImageNet-1k's class names


@dataclass(frozen=True)
class Format:
    """One export format: its module, the input layouts it takes (the first is the default), whether its batch can
    stay symbolic, the packages that write and run it, and how to install them. The module has
    `serialize(model, img_size, batch_size, layout) -> bytes` and `runner(path) -> run(x) -> logits` (`x` in the
    artifact's layout)."""

    module: str
    layouts: tuple[str, ...]
    dynamic_batch: bool
    writer: str
    runtime: str
    install: str = "pip install 'mv2jax[export]'"


# litert-converter pins xdsl 0.28, which caps typing_extensions below what pydantic and anyio ask: its own environment.
LITERT_INSTALL = "pip install 'mv2jax[litert]' (in its own environment: it pins an older typing_extensions)"
FORMATS = {
    "onnx": Format("mv2jax.export.onnx_graph", ("nchw", "nhwc"), True, "onnx", "onnxruntime"),
    "stablehlo": Format("mv2jax.export.stablehlo", ("nhwc",), True, "jax", "jax"),
    "tflite": Format(
        "mv2jax.export.tflite", ("nhwc", "nchw"), False, "litert_converter", "ai_edge_litert", LITERT_INSTALL
    ),
}


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise ValueError(f"unknown format {name!r}: choose one of {', '.join(FORMATS)}")
    return FORMATS[name]


def sidecar_path(path: Path) -> Path:
    return Path(f"{path}.json")


def export(
    model: MobileNetV2,
    output: str | Path,
    fmt: str,
    data_config: dict[str, Any],
    *,
    name: str,
    source: str | None = None,
    class_names: Sequence[str] | None = None,
    batch_size: int | None = None,
    layout: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write `model` (eval mode) as a `fmt` artifact at `output` plus its sidecar; returns the sidecar.

    `data_config` is the model's resolved eval preprocessing (its `input_size` sets the artifact's H, W); `name`,
    `source` and `class_names` (one per output) are the sidecar's `model`, `source` and `class_names`. Both files
    are written beside their destinations and renamed into place, so neither is ever half-written."""
    form, output = get_format(fmt), Path(output)
    layout = layout or form.layouts[0]
    if layout not in form.layouts:
        raise ValueError(f"{fmt} takes {' or '.join(form.layouts)} input, not {layout}: drop --layout {layout}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    if batch_size is None and not form.dynamic_batch:
        batch_size = 1
    if class_names is not None and len(class_names) != model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model of {model.num_classes} classes")
    if model.in_chans != 3 or data_config["input_size"][0] != 3:
        raise ValueError(f"the model takes {model.in_chans} input channels: export supports RGB (3) models only")
    refuse_existing([output, sidecar_path(output)], overwrite)
    _require(form.writer, f"writing {fmt}", form.install)
    _, h, w = data_config["input_size"]
    serialize = importlib.import_module(form.module).serialize
    data = serialize(model, (h, w), batch_size, layout)
    sidecar = dict(
        schema=SIDECAR_SCHEMA,
        format=fmt,
        model=name,
        source=source,
        mv2jax_version=mv2jax.__version__,
        input_size=list(data_config["input_size"]),
        layout=layout,
        batch_size=batch_size,
        mean=list(data_config["mean"]),
        std=list(data_config["std"]),
        crop_pct=data_config["crop_pct"],
        crop_mode=data_config["crop_mode"],
        interpolation=data_config["interpolation"],
        num_classes=model.num_classes,
        class_names=None if class_names is None else list(class_names),
    )
    write_files({output: data, sidecar_path(output): (json.dumps(sidecar, indent=2) + "\n").encode()})
    return sidecar


def write_files(files: dict[Path, bytes]) -> None:
    """Write every file to a hidden sibling first, then rename them all into place: a failure or interrupt while
    writing leaves none of them (and no temporary file) behind."""
    temps = {path: sibling(path, "tmp") for path in files}
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            temps[path].write_bytes(data)
        for path, tmp in temps.items():
            os.replace(tmp, path)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The sidecar of the artifact at `path`, in the current schema whichever schema it was written in."""
    side = sidecar_path(Path(path))
    if not Path(path).is_file():
        raise FileNotFoundError(f"artifact {path} does not exist")
    if not side.is_file():
        raise FileNotFoundError(
            f"{path} has no sidecar {side.name} beside it: re-export it with python -m mv2jax.export"
        )
    sidecar = json.loads(side.read_text())
    schema = sidecar.get("schema", 1)
    if schema > SIDECAR_SCHEMA:
        raise ValueError(
            f"{side} has sidecar schema {schema}, newer than this mv2jax's {SIDECAR_SCHEMA}: upgrade mv2jax"
        )
    return _upgrade_schema_1(sidecar) if schema == 1 else sidecar


def _upgrade_schema_1(sidecar: dict[str, Any]) -> dict[str, Any]:
    """A schema 1 sidecar as schema 2: its `labels` ('imagenet-1k' or null) become `class_names`; no `source`."""
    labels = sidecar.pop("labels", None)
    class_names = list(imagenet_class_names()) if labels == IMAGENET_1K else None
    return {"schema": SIDECAR_SCHEMA, **sidecar, "source": None, "class_names": class_names}


def load_artifact(path: str | Path) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """(run, sidecar) for an exported artifact: `run(x)` takes a float32 NHWC batch (normalised per the sidecar),
    whatever the artifact's layout, and returns its logits as numpy (an unpooled feature map NHWC, as mv2jax's
    forward returns it)."""
    sidecar = read_sidecar(path)
    form = get_format(sidecar["format"])
    _require(form.runtime, f"running a {sidecar['format']} artifact", form.install)
    run = importlib.import_module(form.module).runner(Path(path))
    if sidecar["layout"] == "nchw":
        return (lambda x: _to_nhwc(run(np.asarray(x).transpose(0, 3, 1, 2)))), sidecar
    return run, sidecar


def _to_nhwc(out: np.ndarray) -> np.ndarray:
    return out.transpose(0, 2, 3, 1) if out.ndim == 4 else out


def _require(package: str, what: str, install: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise ImportError(f"{what} needs {package}: {install}")


def load_images(paths: list[Path], config: dict[str, Any]) -> np.ndarray:
    """Image files through timm's eval transform for `config` (a sidecar or a resolved data config): NHWC float32.
    A missing or unreadable file is an error naming it (FileNotFoundError, ValueError)."""
    from mv2jax.data import create_eval_transform, load_image

    transform = create_eval_transform(config)
    return np.stack([transform(load_image(path)) for path in paths])
