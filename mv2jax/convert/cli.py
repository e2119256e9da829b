"""`python convert_weights.py`: timm weights -> an mv2jax checkpoint, an mv2jax checkpoint -> timm weights, and
an optional check of either against the real timm package.

An mv2jax checkpoint is an orbax directory (`write_orbax_state`): `state['model']` (and, from training,
`state['ema']`) is the model's Param + BatchStat state as nested dicts in mv2jax layout (conv HWIO, linear
[in, out]); `meta` records the model name, head and stem sizes and where the weights came from. A timm export is
a safetensors file in torch layout (OIHW, [out, in], int64 `num_batches_tracked`) with timm's `config.json` beside
it, so its directory loads as `timm.create_model('local-dir:DIR', pretrained=True)` or can be pushed to the Hub.

`--verify` builds the timm model from the same weights and compares float32 logits on random inputs and on a
photograph through the timm-identical eval transform. Exit codes: 0 done (and verified), 1 verification failed,
2 bad input (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flax import nnx

import mv2jax
from mv2jax.convert.checkpoint import hub_weights, read_checkpoint
from mv2jax.convert.orbax_io import flatten_tree, read_orbax, write_orbax_state
from mv2jax.convert.state_dict import mv2jax_to_timm, timm_to_mv2jax, to_timm_layout
from mv2jax.data import (
    DEFAULT_CROP_MODE,
    DEFAULT_CROP_PCT,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    create_transform,
    resolve_data_config,
)
from mv2jax.models import MobileNetV2, create_model
from mv2jax.models.factory import HF_HUB_PREFIX
from mv2jax.models.registry import pretrained_cfg_for, split_model_name

PROG = "convert_weights.py"
EXIT_OK, EXIT_VERIFY_FAILED, EXIT_BAD_INPUT = 0, 1, 2
# Caused by what the user passed (names, files, the Hub): reported in one line. Anything else is a bug and keeps
# its traceback. CheckpointMismatchError is a ValueError, FileNotFoundError and the Hub's errors are OSErrors.
USER_ERRORS = (ValueError, OSError, ImportError)
DEFAULT_RTOL = 1e-4  # fp32 JAX vs fp32 torch logits agree to ~1e-6 of their scale; a wrong tensor moves them >1e-3
TOPK = 5
RANDOM_BATCH = 4
SEED = 0
HF_CONFIG_NAME = "config.json"
DEFAULT_PHOTO = ("sklearn", "datasets/images/china.jpg")  # a real photograph shipped by scikit-learn
# Keys timm's `save_config_for_hf` drops from a pretrained_cfg (`filter_pretrained_cfg(remove_source=True)`).
_SOURCE_KEYS = frozenset({"url", "file", "hf_hub_id", "hf_hub_filename", "source", "state_dict"})
_KEEP_NULL = frozenset({"pool_size", "first_conv", "classifier"})
_LABEL_KEYS = ("label_names", "label_descriptions", "label_offset")
EXAMPLES = """examples:
  python convert_weights.py --model mobilenetv2_100.ra_in1k --output ckpt/mobilenetv2_100
  python convert_weights.py --model mobilenetv2_100 --checkpoint model.safetensors --output ckpt/m --verify
  python convert_weights.py --to-timm --input ckpt/m --output export/model.safetensors [--ema] --verify
"""


# --- command line --------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python {PROG}", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert timm MobileNetV2 weights to an mv2jax (orbax) checkpoint, or back with --to-timm.")
    parser.add_argument("--to-timm", action="store_true",
                        help="export an mv2jax checkpoint (--input) to a timm safetensors file plus config.json "
                             "(default: import timm weights into an mv2jax checkpoint)")
    parser.add_argument("--model", "-m", metavar="NAME",
                        help="model name as in timm (mobilenetv2_100.ra_in1k, hf-hub:timm/...); required to import; "
                             "with --to-timm it defaults to the model_name in the checkpoint's meta")
    parser.add_argument("--checkpoint", metavar="FILE",
                        help="timm weights to import (.safetensors, or .pth/.bin/.pt with torch); default: the "
                             "tag's Hub weights through huggingface_hub's cache")
    parser.add_argument("--input", metavar="DIR_OR_FILE",
                        help="with --to-timm: the mv2jax checkpoint directory (or a timm file, with --model)")
    parser.add_argument("--output", "-o", required=True, metavar="PATH",
                        help="import: the mv2jax checkpoint directory to create; --to-timm: the .safetensors file "
                             "(name it model.safetensors to make its directory a loadable Hub-style repo)")
    parser.add_argument("--ema", action="store_true",
                        help="take the EMA weights of a training checkpoint (timm's state_dict_ema, mv2jax's ema)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (still atomically)")
    parser.add_argument("--verify", action="store_true",
                        help="check the result against timm built from the same weights: tensors bit for bit, "
                             "logits on random inputs and a photograph (needs the test extra, timm + torch: "
                             "pip install 'mv2jax[test]'); exit 1 if they differ")
    parser.add_argument("--image", metavar="PATH",
                        help="photograph for --verify (default: scikit-learn's sklearn/datasets/images/china.jpg)")
    parser.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                        help=f"--verify fails when max|logit diff| / max|timm logit| exceeds this "
                             f"(default: {DEFAULT_RTOL:g})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 verification failed, 2 bad input)."""
    args = build_parser().parse_args(argv)
    _quiet_orbax_restore()
    try:
        _check_args(args)
        image = _photo_path(args.image) if args.verify else None
        if args.to_timm:
            model, output = export_to_timm(args)
        else:
            source_state_dict, output = import_from_timm(args)
        print(f"wrote {output}")
        if not args.verify:
            return EXIT_OK
        # check what was written, read back as its users will read it
        if args.to_timm:
            ok = verify(model, _read_safetensors(output), image, args.rtol)
        else:
            ok = verify(load_mv2jax(output)[0], source_state_dict, image, args.rtol)
        return EXIT_OK if ok else EXIT_VERIFY_FAILED
    except USER_ERRORS as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _check_args(args: argparse.Namespace) -> None:
    if args.to_timm:
        if not args.input:
            raise ValueError("--to-timm needs --input (an mv2jax checkpoint directory)")
        if args.checkpoint:
            raise ValueError("--checkpoint is for importing timm weights; with --to-timm pass --input")
        if Path(args.output).suffix != ".safetensors":
            raise ValueError(f"--output {args.output} must be a .safetensors file with --to-timm")
    else:
        if not args.model:
            raise ValueError("--model is required to import timm weights (e.g. --model mobilenetv2_100.ra_in1k)")
        if args.input:
            raise ValueError("--input is for --to-timm; to import timm weights pass --checkpoint FILE")
    if args.verify and not all(importlib.util.find_spec(m) for m in ("timm", "torch")):
        raise ImportError("--verify needs timm and torch (the test extra): pip install 'mv2jax[test]'")
    if not args.rtol > 0:
        raise ValueError(f"--rtol must be positive, got {args.rtol}")


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


# orbax warns for every item of a checkpoint restored without explicit arguments, as `read_orbax` does.
_ORBAX_NOISE = _DropMessage("was found in the checkpoint, but could not be restored")


def _quiet_orbax_restore() -> None:
    logger = logging.getLogger("absl")
    if _ORBAX_NOISE not in logger.filters:
        logger.addFilter(_ORBAX_NOISE)


# --- timm -> mv2jax ------------------------------------------------------------------------------------------------

def import_from_timm(args: argparse.Namespace) -> tuple[dict[str, np.ndarray], Path]:
    """timm weights (--checkpoint, or the Hub) -> an mv2jax checkpoint at --output.

    Returns (the timm state dict that was read, the checkpoint directory)."""
    output = Path(args.output)
    _refuse_existing([output], args.overwrite)
    if args.checkpoint:
        source, repo = Path(args.checkpoint), None
    else:
        repo = _hub_repo(args.model)
        try:
            source = Path(hub_weights(repo))
        except OSError as e:
            raise OSError(f"{e}; to this command pass it as --checkpoint FILE") from e
    state_dict = read_checkpoint(source, use_ema=args.ema)
    model = build_model(args.model, state_dict)
    meta = {
        "model_name": args.model,
        "architecture": model.pretrained_cfg["architecture"],
        "num_classes": model.num_classes,
        "in_chans": model.in_chans,
        "global_pool": model.global_pool,
        "source": str(source.absolute()),
        "source_sha256": sha256_file(source),
        "source_ema": args.ema,
        "converted_by": f"mv2jax {mv2jax.__version__} {PROG}",
    }
    if repo:
        meta["source_hf_hub_id"] = repo
    write_checkpoint(output, model, meta, args.overwrite)
    return state_dict, output


def _hub_repo(name: str) -> str:
    """The Hub repo holding the weights of a model name (raises ValueError for an unknown or untrained name)."""
    if name.startswith(HF_HUB_PREFIX):
        return name[len(HF_HUB_PREFIX):]
    architecture, tag = split_model_name(name)
    repo = pretrained_cfg_for(architecture, tag).get("hf_hub_id")
    if not repo:
        raise ValueError(f"{architecture}.{tag} has no pretrained weights on the Hub: pass --checkpoint FILE")
    return repo


def build_model(name: str, state_dict: Mapping[str, np.ndarray], global_pool: str = "avg") -> MobileNetV2:
    """The mv2jax model `name`, with the class count and input channels the weights have, loaded strictly
    (CheckpointMismatchError for weights of another variant); in eval mode."""
    classifier, stem = state_dict.get("classifier.weight"), state_dict.get("conv_stem.weight")
    model = create_model(
        name,
        num_classes=classifier.shape[0] if classifier is not None else 0,
        in_chans=stem.shape[1] if stem is not None and stem.ndim == 4 else 3,
        global_pool=global_pool,
    )
    return timm_to_mv2jax(state_dict, model, model_name=name).eval()


def write_checkpoint(path: Path, model: MobileNetV2, meta: dict, overwrite: bool = False) -> None:
    """The model's Param + BatchStat state (mv2jax layout) and `meta` as an orbax checkpoint at `path`."""
    tree = {"model": nnx.to_pure_dict(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))}
    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        write_orbax_state(path, tree, meta)  # orbax writes a temporary directory and renames it when complete
        return
    tmp = _sibling(path, "tmp")  # --overwrite: write beside, then swap, so `path` is never half-written
    try:
        write_orbax_state(tmp, tree, meta)
        _replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --- mv2jax -> timm ------------------------------------------------------------------------------------------------

def export_to_timm(args: argparse.Namespace) -> tuple[MobileNetV2, Path]:
    """An mv2jax checkpoint (--input) -> timm safetensors at --output plus timm's config.json beside it.

    Returns (the mv2jax model that was exported, the safetensors path)."""
    output = Path(args.output).absolute()
    config_path = output.with_name(HF_CONFIG_NAME)
    _refuse_existing([output, config_path], args.overwrite)
    model, _ = load_mv2jax(Path(args.input), args.model, args.ema)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(output, mv2jax_to_timm(model))
    _write_atomic(config_path, (json.dumps(timm_hf_config(model), indent=2) + "\n").encode())
    return model, output


def load_mv2jax(path: Path, name: str | None = None, use_ema: bool = False) -> tuple[MobileNetV2, dict]:
    """An mv2jax checkpoint directory (or a timm file, with `name`) -> (model in eval mode, meta).

    `name` overrides the checkpoint's meta `model_name`; `use_ema` takes the `ema` weights."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not path.is_dir():
        if not name:
            raise ValueError(f"{path} is a file, which does not name its model: pass --model")
        return build_model(name, read_checkpoint(path, use_ema=use_ema)), {}
    try:
        state, meta = read_orbax(path)
    except KeyError as e:  # read_orbax lets orbax's KeyError through for a directory without a `state` item
        raise ValueError(f"{path} is not an mv2jax (orbax) checkpoint directory (it has no 'state' item)") from e
    name = name or meta.get("model_name")
    if not name:
        raise ValueError(f"{path} has no model_name in its meta: pass --model")
    key = "ema" if use_ema else "model"
    if key not in state:
        raise ValueError(f"{path} has no {key!r} weights (it has {', '.join(state)})")
    state_dict = {k: to_timm_layout(k, v) for k, v in flatten_tree(state[key]).items()}
    return build_model(name, state_dict, meta.get("global_pool", "avg")), meta


def write_safetensors(path: Path, state_dict: Mapping[str, np.ndarray]) -> None:
    """Atomically: write a temporary file in the same directory, then rename it over `path`."""
    from safetensors.numpy import save_file

    tmp = _sibling(path, "tmp")
    try:
        save_file({k: np.asarray(v, order="C") for k, v in state_dict.items()}, str(tmp), metadata={"format": "pt"})
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def timm_hf_config(model: MobileNetV2) -> dict:
    """timm's config.json for the model's current head and stem, as `timm.models.save_for_hf` writes it for the
    same timm model (source fields dropped, preprocessing resolved for `in_chans`, `model_args` recorded)."""
    chans, num_classes = model.in_chans, model.num_classes
    cfg = {
        k: v for k, v in dict(model.pretrained_cfg).items()
        if k not in _SOURCE_KEYS and (v is not None or k in _KEEP_NULL)
    }
    cfg.update(
        input_size=(chans, *tuple(cfg.get("input_size", (3, 224, 224)))[1:]),
        interpolation=cfg.get("interpolation") or "bicubic",
        mean=_channel_stat(cfg.get("mean") or IMAGENET_DEFAULT_MEAN, chans),
        std=_channel_stat(cfg.get("std") or IMAGENET_DEFAULT_STD, chans),
        crop_pct=cfg.get("crop_pct") or DEFAULT_CROP_PCT,
        crop_mode=cfg.get("crop_mode") or DEFAULT_CROP_MODE,
    )
    cfg.update(fixed_input_size=False, first_conv="conv_stem", custom_load=False)
    cfg.pop("label_offset", None)
    if num_classes != cfg.get("num_classes"):
        for key in _LABEL_KEYS:
            cfg.pop(key, None)
    cfg["num_classes"] = num_classes
    config = {"architecture": cfg.pop("architecture"), "num_classes": num_classes,
              "num_features": model.num_features}
    if model.global_pool:
        config["global_pool"] = model.global_pool
    config["model_args"] = {"in_chans": chans, "num_classes": num_classes, "global_pool": model.global_pool}
    config["pretrained_cfg"] = cfg
    return config


def _channel_stat(value: Sequence[float], chans: int) -> tuple[float, ...]:
    """timm's rule: a mean/std that fits neither 1 nor `chans` channels becomes its average."""
    value = tuple(value)
    return value if len(value) in (1, chans) else (sum(value) / len(value),)


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return dict(load_file(str(path)))


# --- files ---------------------------------------------------------------------------------------------------------

def _refuse_existing(paths: Sequence[Path], overwrite: bool) -> None:
    for path in paths:
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists: pass --overwrite to replace it")


def _sibling(path: Path, kind: str) -> Path:
    """A hidden name beside `path` (same filesystem, so a rename is atomic)."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def _replace(new: Path, dst: Path) -> None:
    """Move the complete `new` to `dst`; an existing directory is swapped out first (rename cannot replace one)."""
    if dst.is_dir():
        old = _sibling(dst, "old")
        os.replace(dst, old)
        os.replace(new, dst)
        shutil.rmtree(old)
    else:
        os.replace(new, dst)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = _sibling(path, "tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- verification against timm -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Comparison:
    """mv2jax logits vs timm logits on one input batch."""

    name: str
    shape: tuple[int, ...]  # the NHWC input
    max_abs: float  # max |mv2jax - timm|
    rel: float  # max_abs / max |timm|
    top_agree: int  # samples whose top-k classes agree (up to ties, see `top_k_agreement`)
    top_exact: int  # samples whose top-k classes agree in the same order exactly
    count: int

    def passed(self, rtol: float) -> bool:
        return self.rel <= rtol and self.top_agree == self.count

    def line(self, k: int, width: int) -> str:
        shape = "x".join(map(str, self.shape))
        top = (f"top-{k} agree {self.top_agree}/{self.count} (exact order {self.top_exact}/{self.count})" if k
               else "(pooled features: no classes to rank)")
        return f"  {self.name:<{width}}  {shape:<14} max|diff| {self.max_abs:.3e}  rel {self.rel:.3e}  {top}"


def verify(model: MobileNetV2, timm_state_dict: Mapping[str, np.ndarray], image: Path | None, rtol: float) -> bool:
    """Check `model` against timm's model holding `timm_state_dict`: the tensors bit for bit, then the logits on
    random inputs and a photograph. Prints a report; returns whether every check passed."""
    import timm

    print(f"verify {model.pretrained_cfg['architecture']} against timm {timm.__version__} (float32, rtol {rtol:g})")
    try:
        tmodel = timm_reference(model, timm_state_dict)
    except (RuntimeError, ValueError) as e:
        print(f"verify: FAIL: timm rejects the weights: {' '.join(str(e).split())}")
        return False
    differ, count = differing_tensors(model, timm_state_dict)
    listed = f", differ: {_short(differ)}" if differ else ""
    print(f"  weights: {count - len(differ)}/{count} tensors bit-identical{listed}")
    batches = {"random": random_inputs(model)}
    if image is not None and model.in_chans == 3:
        batches[image.name] = photo_inputs(model, image)
    else:
        print(f"  (photograph skipped: the model takes {model.in_chans} channels)")
    results = compare_logits(model, tmodel, batches, rtol)
    width = max(len(name) for name in batches)
    k = min(TOPK, model.num_classes)
    for result in results:
        print(result.line(k, width))
    ok = not differ and all(r.passed(rtol) for r in results)
    print(f"verify: {'PASS' if ok else 'FAIL: the weights do not reproduce timm, do not use this output'}")
    return ok


def differing_tensors(model: MobileNetV2, state_dict: Mapping[str, np.ndarray]) -> tuple[list[str], int]:
    """(keys of `state_dict` whose tensors differ from the model's, number of tensors compared). Values are
    compared in the model's dtype (a float16 checkpoint holds exactly what the float32 model holds)."""
    exported = mv2jax_to_timm(model)
    keys = [k for k in state_dict if k in exported]
    differ = [k for k in keys if not _identical(exported[k], np.asarray(state_dict[k]).astype(exported[k].dtype))]
    return differ, len(keys)


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a, b)  # array_equal alone broadcasts a scalar against [1]


def _short(keys: list[str], limit: int = 3) -> str:
    return ", ".join(keys[:limit]) + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def compare_logits(model: MobileNetV2, tmodel, batches: Mapping[str, np.ndarray], rtol: float) -> list[Comparison]:
    """One Comparison per named NHWC batch; all batches run as one (one compilation)."""
    out, ref = run_both(model, tmodel, np.concatenate(list(batches.values())))
    k, start, results = min(TOPK, model.num_classes), 0, []
    for name, x in batches.items():
        part = slice(start, start + len(x))
        results.append(compare(name, x.shape, out[part], ref[part], k, rtol))
        start += len(x)
    return results


def timm_reference(model: MobileNetV2, state_dict: Mapping[str, np.ndarray]):
    """timm's model of the same variant, head and stem, holding `state_dict` (strict load; a missing
    `num_batches_tracked` is tolerated, as mv2jax does), in eval mode."""
    import timm
    import torch

    tmodel = timm.create_model(model.pretrained_cfg["architecture"], num_classes=model.num_classes,
                               in_chans=model.in_chans, global_pool=model.global_pool)
    result = tmodel.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    return tmodel.eval()


def random_inputs(model: MobileNetV2) -> np.ndarray:
    """A seeded standard-normal NHWC batch at the model's default input size."""
    _, h, w = model.pretrained_cfg["input_size"]
    return np.random.default_rng(SEED).standard_normal((RANDOM_BATCH, h, w, model.in_chans), dtype=np.float32)


def photo_inputs(model: MobileNetV2, image: Path) -> np.ndarray:
    """The photograph through the model's timm-identical eval transform, as an NHWC batch of one."""
    from PIL import Image

    transform = create_transform(**resolve_data_config(model))
    with Image.open(image) as img:
        return transform(img.convert("RGB"))[None]


_jit_forward = nnx.jit(lambda model, x: model(x))  # one compilation per variant and batch shape


def run_both(model: MobileNetV2, tmodel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mv2jax output, timm output) in float64 for an NHWC float32 batch (timm gets it as NCHW)."""
    import torch

    out = np.asarray(_jit_forward(model, x), np.float64)
    with torch.no_grad():
        ref = tmodel(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy().astype(np.float64)
    return out, ref


def compare(name: str, shape: tuple[int, ...], out: np.ndarray, ref: np.ndarray, k: int, rtol: float) -> Comparison:
    max_abs = float(np.max(np.abs(out - ref)))
    scale = float(np.max(np.abs(ref))) or 1.0
    count = len(out)
    agree, exact = top_k_agreement(out, ref, k, tie=2 * rtol * scale) if k else (count, count)
    return Comparison(name, tuple(shape), max_abs, max_abs / scale, agree, exact, count)


def top_k_agreement(out: np.ndarray, ref: np.ndarray, k: int, tie: float) -> tuple[int, int]:
    """(samples whose top-k classes agree up to ties, samples agreeing exactly) for logits [B, classes].

    The rank-i class of `out` must have a timm logit within `tie` of timm's rank-i logit: classes whose timm
    logits are that close are tied, and float noise within the tolerance may order them either way."""
    top_out = np.argsort(-out, axis=1, kind="stable")[:, :k]
    top_ref = np.argsort(-ref, axis=1, kind="stable")[:, :k]
    gaps = np.abs(np.take_along_axis(ref, top_out, 1) - np.take_along_axis(ref, top_ref, 1))
    return int(np.sum(np.all(gaps <= tie, axis=1))), int(np.sum(np.all(top_out == top_ref, axis=1)))


def _photo_path(image: str | None) -> Path:
    """--image, or the photograph scikit-learn ships (found without importing scikit-learn)."""
    if image:
        path = Path(image)
    else:
        package, relative = DEFAULT_PHOTO
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("--verify's default photograph comes from scikit-learn: install it or pass --image")
        path = Path(spec.submodule_search_locations[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    return path
