"""One road from any weights source to a model: a timm name (with `pretrained`, timm's Hub weights through
huggingface_hub's cache), an `hf-hub:` name, a checkpoint file (.safetensors/.pth/.bin), an mv2jax checkpoint
directory (a convert_weights.py output or a train.py step directory; its `ema` weights with `use_ema`), or a state
dict already read. Every entry point (create_model, train.py, validate, export, predict, the converters) builds
its model here, once, with the checkpoint's metadata beside it.

Two modes, as timm's:
- strict (a checkpoint without `pretrained`; timm's `load_checkpoint`): every key must fit, one
  CheckpointMismatchError lists every misfit;
- pretrained adaptation (`pretrained=True`; timm's `load_pretrained`): a classifier of another class count is
  re-initialised and the stem is adapted to `in_chans`. With `new_classifier=True` the classifier is re-initialised
  whatever its class count: timm's train.py `--pretrained-path FILE`, whose `pretrained_cfg_overlay` sets
  `num_classes=-1` so that no class count matches.

`ModelMeta` records which of the model's tensors were loaded, re-initialised and adapted.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from mv2jax.models.factory import new_model, resolve_name, weights_name
from mv2jax.models.mobilenetv2 import MobileNetV2, MobileNetV2Features
from mv2jax.weights import (
    CheckpointMismatchError,
    adapt_input_conv,
    check_state_dict,
    hub_weights,
    model_variables,
    read_checkpoint,
    read_orbax_weights,
    step_directory,
    timm_to_mv2jax,
)

_HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.")
_CLASSIFIER_KEYS = ("classifier.weight", "classifier.bias")
_STEM_KEY = "conv_stem.weight"


class ClassifierMismatchError(CheckpointMismatchError):
    """A strict load where only the classifier misfits: `checkpoint_classes` rows in the checkpoint (0: none),
    `model_classes` in the model. The weights load as pretrained ones with a new classifier."""

    def __init__(self, message: str, checkpoint_classes: int, model_classes: int) -> None:
        super().__init__(message)
        self.checkpoint_classes = checkpoint_classes
        self.model_classes = model_classes


@dataclasses.dataclass(frozen=True)
class ModelMeta:
    """What is known of a loaded model beyond its weights.

    `name`: the model name it was built from (given, or recorded by the checkpoint). `architecture`: the
    variant (`mobilenetv2_100`). `source`: where the weights came from, in words. `pretrained_tag`: the tag of
    timm's published weights (`ra_in1k`), only when those were loaded. `class_names`: one per output, where the
    checkpoint or the Hub config records them. `data_config`: the data config train.py trained with (timm's
    `resolve_data_config` keys), where recorded. `recorded`: an mv2jax checkpoint directory's meta as saved
    (empty for other sources). `loaded`, `reinitialised`, `adapted`: the model's tensors (timm state-dict keys)
    set from the weights, left freshly initialised in place of the weights' (a new classifier), and loaded after
    adaptation (the stem, to other input channels); all empty for an untrained model."""

    name: str
    architecture: str
    num_classes: int
    source: str
    pretrained_tag: str | None = None
    class_names: tuple[str, ...] | None = None
    data_config: Mapping[str, Any] | None = None
    recorded: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    loaded: tuple[str, ...] = ()
    reinitialised: tuple[str, ...] = ()
    adapted: tuple[str, ...] = ()

    def weights_summary(self) -> str:
        """One line for a log: the weights' source, and the tensors loaded, re-initialised and adapted."""
        if not self.loaded:
            return f"weights: {self.source}"
        parts = [f"{len(self.loaded)} tensors loaded"]
        if self.reinitialised:
            parts.append(f"re-initialised: {', '.join(self.reinitialised)}")
        if self.adapted:
            parts.append(f"adapted to the input channels: {', '.join(self.adapted)}")
        return f"weights: {self.source}: " + "; ".join(parts)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model (in train mode, as timm's models start: call `.eval()` for inference) and its `ModelMeta`."""

    model: MobileNetV2 | MobileNetV2Features
    meta: ModelMeta


@dataclasses.dataclass(frozen=True)
class _Source:
    """Where the weights are to come from, as the caller named it."""

    pretrained: bool = False
    checkpoint_path: str | os.PathLike | None = None
    state_dict: Mapping[str, Any] | None = None
    use_ema: bool = False
    new_classifier: bool = False


@dataclasses.dataclass(frozen=True)
class _Weights:
    """A weights source once read: the timm state dict (None: untrained), the mv2jax checkpoint's meta, where the
    weights came from, and whether they are timm's published ones."""

    state_dict: dict[str, np.ndarray] | None
    recorded: dict[str, Any]
    source: str
    published: bool = False


def load_model(
    name: str | None = None,
    *,
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    state_dict: Mapping[str, Any] | None = None,
    use_ema: bool = False,
    new_classifier: bool = False,
    num_classes: int | None = None,
    in_chans: int | None = None,
    global_pool: str | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    dtype=None,
    param_dtype=None,
    conv_impl: str = "auto",
    seed: int = 0,
) -> LoadedModel:
    """Build the model once and load its weights: `checkpoint_path` (a file, or an mv2jax checkpoint directory,
    which names its own model: `name` overrides it) or `state_dict`, else with `pretrained` timm's Hub weights of
    `name`, else none (untrained). `pretrained` selects timm's adaptation mode, else loading is strict.
    `new_classifier` (with `pretrained`) re-initialises the classifier even when its class count matches, as
    timm's train.py does with `--pretrained-path`.

    `num_classes`, `in_chans` and `global_pool` left None are the checkpoint's in strict mode (its classifier
    rows, its stem's channels, the recorded pool), else the pretrained class count, 3 and 'avg'. The other keyword
    arguments are `create_model`'s. Errors are one line: ValueError (a bad name or source), OSError (a missing
    file, the Hub out of reach), CheckpointMismatchError (weights that do not fit; a ValueError;
    ClassifierMismatchError when only a strict load's classifier does not)."""
    build = dict(
        features_only=features_only,
        out_indices=out_indices,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
        dtype=dtype,
        param_dtype=param_dtype,
        conv_impl=conv_impl,
        seed=seed,
    )
    sizes = dict(num_classes=num_classes, in_chans=in_chans, global_pool=global_pool)
    source = _Source(pretrained, checkpoint_path, state_dict, use_ema, new_classifier)
    return _load(name, source, sizes, build, sizes_from_checkpoint=True)


def create_model(
    name: str,
    pretrained: bool = False,
    *,
    checkpoint_path: str | os.PathLike | None = None,
    num_classes: int | None = None,
    in_chans: int = 3,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    global_pool: str = "avg",
    dtype=None,
    param_dtype=None,
    conv_impl: str = "auto",
    seed: int = 0,
) -> MobileNetV2 | MobileNetV2Features:
    """Build a MobileNetV2 variant by timm name (`mobilenetv2_100`, `mobilenetv2_100.ra_in1k`,
    `hf-hub:timm/mobilenetv2_100.ra_in1k`). Input NHWC `[B, H, W, in_chans]` float.

    `pretrained=True` loads the tag's weights from timm's Hub repo (through huggingface_hub's cache) or
    from `checkpoint_path`, adapting as timm does: a different `num_classes` re-initialises the classifier
    and `in_chans != 3` adapts the stem. `checkpoint_path` without `pretrained` loads strictly into the model
    these arguments describe (`num_classes` None: the name's class count), as timm's `create_model`.
    Like a timm model, the result starts in train mode: call `.eval()` for inference.
    """
    build = dict(
        features_only=features_only,
        out_indices=out_indices,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
        dtype=dtype,
        param_dtype=param_dtype,
        conv_impl=conv_impl,
        seed=seed,
    )
    sizes = dict(num_classes=num_classes, in_chans=in_chans, global_pool=global_pool)
    source = _Source(pretrained, checkpoint_path)
    return _load(name, source, sizes, build, sizes_from_checkpoint=False).model


def _load(
    name: str | None, source: _Source, sizes: dict[str, Any], build: dict[str, Any], sizes_from_checkpoint: bool
) -> LoadedModel:
    """The road itself: read the weights (before building, so that a missing file or an unreachable Hub fails
    at once), build the model once, load the weights in the chosen mode."""
    weights, name = _directory_weights(name, source)
    architecture, cfg = resolve_name(name)
    weights = weights or _read_weights(source, cfg, weights_name(architecture, cfg), build["seed"])
    recorded, features_only = weights.recorded, build["features_only"]
    pretrained_classes = recorded.get("num_classes", cfg["num_classes"])
    if weights.state_dict is not None and not source.pretrained and sizes_from_checkpoint:
        defaults = _checkpoint_sizes(weights.state_dict, recorded)
    else:
        defaults = dict(num_classes=pretrained_classes, in_chans=3, global_pool=recorded.get("global_pool", "avg"))
    sizes = {k: defaults[k] if v is None else v for k, v in sizes.items()}
    model = new_model(architecture, cfg, **sizes, **build)
    record: dict[str, tuple[str, ...]] = {}
    if weights.state_dict is not None:
        state = _drop_head(weights.state_dict, features_only)
        new_head = source.pretrained and not features_only
        new_head = new_head and (source.new_classifier or sizes["num_classes"] != pretrained_classes)
        record = _load_state(model, state, source, name, sizes, new_head)
    published = _published(weights, cfg)
    # a new classifier's outputs are neither the weights' classes nor timm's published model
    new_classes = bool(record.get("reinitialised"))
    class_names = None if new_classes else _class_names(recorded, cfg, sizes["num_classes"])
    meta = ModelMeta(
        name=name,
        architecture=architecture,
        num_classes=sizes["num_classes"],
        source=weights.source,
        pretrained_tag=cfg.get("tag") if published and not new_classes else None,
        class_names=class_names,
        data_config=recorded.get("data_config"),
        recorded=recorded,
        **record,
    )
    return LoadedModel(model, meta)


def _load_state(
    model: nnx.Module, state: dict, source: _Source, name: str, sizes: Mapping[str, Any], new_head: bool
) -> dict[str, tuple[str, ...]]:
    """Load the timm state dict `state` into `model` in the source's mode (`new_head`: drop its classifier for the
    model's fresh one); ModelMeta's `loaded`, `reinitialised` and `adapted` keys."""
    adapted = _adapt(state, sizes["in_chans"], new_head) if source.pretrained else ()
    try:
        timm_to_mv2jax(state, model, model_name=name, allow_missing=_CLASSIFIER_KEYS if new_head else ())
    except CheckpointMismatchError as e:
        if not source.pretrained:
            _raise_if_only_the_classifier(e, state, model, name, sizes["num_classes"])
        raise
    variables = model_variables(model)
    return dict(
        loaded=tuple(k for k in variables if k in state),
        reinitialised=tuple(k for k in _CLASSIFIER_KEYS if new_head and k in variables),
        adapted=adapted,
    )


def _raise_if_only_the_classifier(
    error: CheckpointMismatchError, state: Mapping[str, Any], model: nnx.Module, name: str, num_classes: int
) -> None:
    """A strict load that failed on the classifier alone: ClassifierMismatchError, which says how to load it."""
    try:
        check_state_dict(
            {k: v for k, v in state.items() if k not in _CLASSIFIER_KEYS}, model, allow_missing=_CLASSIFIER_KEYS
        )
    except CheckpointMismatchError:
        return  # more than the classifier misfits: the original error stands
    classes = int(np.shape(state["classifier.weight"])[0]) if "classifier.weight" in state else 0
    raise ClassifierMismatchError(
        f"checkpoint does not fit {name}: {error.misfits}. Only its classifier differs ({classes} classes there, "
        f"{num_classes} in the model): load it strictly with num_classes={classes}, or as pretrained weights with a "
        "new classifier (pretrained=True, new_classifier=True)",
        classes,
        num_classes,
    ) from None


def _published(weights: _Weights, cfg: Mapping[str, Any]) -> bool:
    """Whether the weights are timm's published ones: read from the Hub, or a convert_weights.py import that
    recorded the cfg's Hub repo as its source."""
    hub_id = cfg.get("hf_hub_id")
    return weights.published or bool(hub_id and weights.recorded.get("source_hf_hub_id") == hub_id)


def _class_names(recorded: Mapping[str, Any], cfg: Mapping[str, Any], num_classes: int) -> tuple[str, ...] | None:
    """One name per output, as the data names its classes: the checkpoint's recorded class names, else the Hub
    config's `label_names`; None when unknown or of another count. (timm's published ImageNet weights record none:
    their display names are `mv2jax.data.imagenet`'s.)"""
    names = recorded.get("class_names") or cfg.get("label_names")
    return tuple(names) if names and len(names) == num_classes else None


def _directory_weights(name: str | None, source: _Source) -> tuple[_Weights | None, str]:
    """(an mv2jax checkpoint directory's weights, None for other sources; the model name, which such a directory
    records). Checks the source's arguments first."""
    path = None if source.checkpoint_path is None else Path(source.checkpoint_path)
    if path is not None and source.state_dict is not None:
        raise ValueError("pass one weights source: checkpoint_path= or state_dict=, not both")
    if source.use_ema and path is None:
        raise ValueError("use_ema selects a checkpoint's EMA weights: it needs a checkpoint (--checkpoint PATH)")
    if source.new_classifier and not source.pretrained:
        raise ValueError("new_classifier re-initialises the classifier of pretrained weights: pass pretrained=True")
    if path is not None and not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    weights = None
    if path is not None and path.is_dir():
        path = step_directory(path)
        state_dict, recorded = read_orbax_weights(path, use_ema=source.use_ema)
        weights = _Weights(state_dict, recorded, f"{path.absolute()} ({'EMA' if source.use_ema else 'model'} weights)")
        name = name or recorded.get("model_name")
        if not name:
            raise ValueError(f"{path} has no model_name in its meta: pass --model NAME")
    elif path is not None and not name:
        raise ValueError(f"{path} is a file, which does not name its model: pass --model NAME")
    if not name:
        raise ValueError("no model given: pass a model name (--model NAME) or an mv2jax checkpoint directory")
    return weights, name


def _read_weights(source: _Source, cfg: dict, label: str, seed: int) -> _Weights:
    """The weights of a checkpoint file, a state dict, timm's Hub (with `pretrained`), or none."""
    if source.checkpoint_path is not None:
        path = Path(source.checkpoint_path)
        return _Weights(read_checkpoint(path, use_ema=source.use_ema), {}, str(path.absolute()))
    if source.state_dict is not None:
        return _Weights(dict(source.state_dict), {}, "a state dict in memory")
    if source.pretrained:
        return _hub_source(cfg, label)
    return _Weights(None, {}, f"untrained (seed {seed})")


def _hub_source(cfg: dict, label: str) -> _Weights:
    """timm's published weights of the pretrained cfg, read from huggingface_hub's cache."""
    hint = "on the command line: --checkpoint FILE instead of --pretrained; train.py: --pretrained-path FILE"
    if not cfg.get("hf_hub_id"):
        raise ValueError(f"{label} has no pretrained weights: use pretrained=False or pass checkpoint_path= ({hint})")
    try:
        path = hub_weights(cfg["hf_hub_id"])
    except OSError as e:
        raise OSError(f"{e} ({hint})") from e
    return _Weights(read_checkpoint(path), {}, f"{cfg['hf_hub_id']} on the Hub ({path})", published=True)


def _checkpoint_sizes(state_dict: Mapping[str, np.ndarray], recorded: Mapping[str, Any]) -> dict[str, Any]:
    """The class count, input channels and pool a checkpoint was saved with (its classifier rows, 0 without a
    classifier; its stem's input channels; the recorded pool, else 'avg')."""
    classifier, stem = state_dict.get("classifier.weight"), state_dict.get("conv_stem.weight")
    return dict(
        num_classes=int(np.shape(classifier)[0]) if classifier is not None else 0,
        in_chans=int(np.shape(stem)[1]) if stem is not None and np.ndim(stem) == 4 else 3,
        global_pool=recorded.get("global_pool", "avg"),
    )


def _drop_head(state_dict: dict, features_only: bool) -> dict:
    """A features_only model has no head: drop its keys (as timm, which loads features models non-strictly)."""
    if not features_only:
        return dict(state_dict)
    return {k: v for k, v in state_dict.items() if not k.startswith(_HEAD_PREFIXES)}


def _adapt(state_dict: dict, in_chans: int, new_classifier: bool) -> tuple[str, ...]:
    """timm's `load_pretrained`, in place: the stem adapted to `in_chans`; the classifier dropped for a new one (the
    model's fresh one stays). The keys adapted."""
    adapted: tuple[str, ...] = ()
    stem = state_dict.get(_STEM_KEY)
    if stem is not None and np.ndim(stem) == 4 and np.shape(stem)[1] != in_chans:
        state_dict[_STEM_KEY] = adapt_input_conv(in_chans, np.asarray(stem))
        adapted = (_STEM_KEY,)
    if new_classifier:
        for key in _CLASSIFIER_KEYS:
            state_dict.pop(key, None)
    return adapted
