"""`convert_weights.py --verify`: an mv2jax model against timm's model built from the same weights. The tensors
must be bit-identical, and the float32 logits must pass the rule the test suite applies everywhere: with timm in
float64 as the reference, mv2jax's float32 error may be at most `YARDSTICK_FACTOR` times timm's own float32 error
(`rel_err` over the whole logits tensor), with the same top-k classes up to ties within that error; on random
inputs and on a photograph through the timm-identical eval transform. Needs timm and torch."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flax import nnx

from mv2jax.data import create_eval_transform, resolve_data_config
from mv2jax.models import MobileNetV2
from mv2jax.weights import mv2jax_to_timm

# mv2jax float32 may be this many times as far from timm float64 as timm float32 is: a reordered sum is as good as
# timm's own, and a wrong tensor moves the logits by orders of magnitude more.
YARDSTICK_FACTOR = 2.0
TOPK = 5
RANDOM_BATCH = 4
SEED = 0
DEFAULT_PHOTO = ("sklearn", "datasets/images/china.jpg")  # a real photograph shipped by scikit-learn


@dataclass(frozen=True)
class Comparison:
    """mv2jax logits vs timm logits on one input batch."""

    name: str
    shape: tuple[int, ...]  # the NHWC input
    max_abs: float  # max |mv2jax float32 - timm float64|
    rel: float  # rel_err(mv2jax float32, timm float64)
    timm_rel: float  # rel_err(timm float32, timm float64): the yardstick
    top_agree: int  # samples whose top-k classes agree with timm float64's (up to ties, see `top_k_agreement`)
    top_exact: int  # samples whose top-k classes agree in the same order exactly
    count: int

    @property
    def bound(self) -> float:
        return YARDSTICK_FACTOR * self.timm_rel

    def passed(self) -> bool:
        return self.rel <= self.bound and self.top_agree == self.count

    def line(self, k: int, width: int) -> str:
        shape = "x".join(map(str, self.shape))
        top = (
            f"top-{k} agree {self.top_agree}/{self.count} (exact order {self.top_exact}/{self.count})"
            if k
            else "(pooled features: no classes to rank)"
        )
        return (
            f"  {self.name:<{width}}  {shape:<14} max|diff| {self.max_abs:.3e}  rel {self.rel:.3e}  "
            f"(timm fp32 {self.timm_rel:.3e}, bound {self.bound:.3e})  {top}"
        )


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    """max|a - ref| / max|ref| over the whole tensor, in float64 (max|a - ref| when ref is all zeros): the error
    measure of every parity check (the tests import it from here)."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    assert a.shape == ref.shape, (a.shape, ref.shape)
    scale = np.max(np.abs(ref))
    return float(np.max(np.abs(a - ref)) / (scale if scale > 0 else 1.0))


def verify(model: MobileNetV2, timm_state_dict: Mapping[str, np.ndarray], image: Path | None) -> bool:
    """Check `model` against timm's model holding `timm_state_dict`: the tensors bit for bit, then the logits on
    random inputs and a photograph. Prints a report; returns whether every check passed."""
    import timm

    print(
        f"verify {model.pretrained_cfg['architecture']} against timm {timm.__version__}: float32 error vs timm "
        f"float64 at most {YARDSTICK_FACTOR:g}x timm float32's own"
    )
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
    results = compare_logits(model, tmodel, batches)
    width = max(len(name) for name in batches)
    k = min(TOPK, model.num_classes)
    for result in results:
        print(result.line(k, width))
    ok = not differ and all(r.passed() for r in results)
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


def compare_logits(model: MobileNetV2, tmodel, batches: Mapping[str, np.ndarray]) -> list[Comparison]:
    """One Comparison per named NHWC batch; all batches run as one (one compilation)."""
    out, ref32, ref64 = run_both(model, tmodel, np.concatenate(list(batches.values())))
    k, start, results = min(TOPK, model.num_classes), 0, []
    for name, x in batches.items():
        part = slice(start, start + len(x))
        results.append(compare(name, x.shape, out[part], ref32[part], ref64[part], k))
        start += len(x)
    return results


def timm_reference(model: MobileNetV2, state_dict: Mapping[str, np.ndarray]):
    """timm's model of the same variant, head and stem, holding `state_dict` (strict load; a missing
    `num_batches_tracked` is tolerated, as mv2jax does), in eval mode."""
    import timm
    import torch

    tmodel = timm.create_model(
        model.pretrained_cfg["architecture"],
        num_classes=model.num_classes,
        in_chans=model.in_chans,
        global_pool=model.global_pool,
    )
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

    transform = create_eval_transform(resolve_data_config(model))
    with Image.open(image) as img:
        return transform(img.convert("RGB"))[None]


_jit_forward = nnx.jit(lambda model, x: model(x))  # one compilation per variant and batch shape


def run_both(model: MobileNetV2, tmodel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mv2jax float32, timm float32, timm float64) outputs, as float64 arrays, for an NHWC float32 batch (timm
    gets it as NCHW; its float64 run is a copy of the model)."""
    import copy

    import torch

    out = np.asarray(_jit_forward(model, x), np.float64)
    nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        ref32 = tmodel(nchw).numpy().astype(np.float64)
        ref64 = copy.deepcopy(tmodel).double()(nchw.double()).numpy()
    return out, ref32, ref64


def compare(
    name: str, shape: tuple[int, ...], out: np.ndarray, ref32: np.ndarray, ref64: np.ndarray, k: int
) -> Comparison:
    """mv2jax's float32 `out` and timm's float32 `ref32` against timm's float64 `ref64`."""
    max_abs = float(np.max(np.abs(out - ref64)))
    rel, timm_rel = rel_err(out, ref64), rel_err(ref32, ref64)
    count = len(out)
    # Classes whose float64 logits lie within twice the allowed error of each other may swap ranks.
    tie = 2 * YARDSTICK_FACTOR * timm_rel * (float(np.max(np.abs(ref64))) or 1.0)
    agree, exact = top_k_agreement(out, ref64, k, tie=tie) if k else (count, count)
    return Comparison(name, tuple(shape), max_abs, rel, timm_rel, agree, exact, count)


def top_k_agreement(out: np.ndarray, ref: np.ndarray, k: int, tie: float) -> tuple[int, int]:
    """(samples whose top-k classes agree up to ties, samples agreeing exactly) for logits [B, classes].

    The rank-i class of `out` must have a timm logit within `tie` of timm's rank-i logit: classes whose timm
    logits are that close are tied, and float noise within the tolerance may order them either way."""
    top_out = np.argsort(-out, axis=1, kind="stable")[:, :k]
    top_ref = np.argsort(-ref, axis=1, kind="stable")[:, :k]
    gaps = np.abs(np.take_along_axis(ref, top_out, 1) - np.take_along_axis(ref, top_ref, 1))
    return int(np.sum(np.all(gaps <= tie, axis=1))), int(np.sum(np.all(top_out == top_ref, axis=1)))


def photo_path(image: str | None) -> Path:
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
