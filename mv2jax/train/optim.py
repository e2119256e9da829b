"""timm's optimizers as optax chains: RMSpropTF, SGD (nesterov / classical momentum), AdamW; timm's weight-decay
grouping as an optax mask; timm's gradient clipping.

Learning rates are per update; a schedule is a `count -> lr` function of the 0-based update index (optax's count).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Collection, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

ScalarOrSchedule = float | Callable[[Any], Any]
MaskOrFn = Any | Callable[[Any], Any] | None
CLIP_MODES = ("norm", "value")
# torch.nn.utils.clip_grad_norm_ divides by (total_norm + 1e-6)
_TORCH_CLIP_NORM_EPS = 1e-6


def rmsprop_tf(
    learning_rate: ScalarOrSchedule,
    decay: float = 0.9,
    eps: float = 1e-3,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    mask: MaskOrFn = None,
    centered: bool = False,
    lr_in_momentum: bool = True,
) -> optax.GradientTransformation:
    """timm's RMSpropTF (`alpha`=decay) as an optax chain.

    g += weight_decay * p (coupled, where `mask` is True); sq = decay*sq + (1-decay)*g^2 with sq initialised to 1;
    step = g / sqrt(sq + eps) (eps inside the sqrt); with `lr_in_momentum` buf = momentum*buf + lr*step and
    p -= buf, so the lr of each update (a float or `count -> lr` schedule) is folded into the momentum buffer.
    """
    parts = []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay, mask))
    if centered:
        parts.append(optax.scale_by_stddev(decay, eps, initial_scale=1.0, eps_in_sqrt=True))
    else:
        parts.append(optax.scale_by_rms(decay, eps, initial_scale=1.0, eps_in_sqrt=True))
    if momentum > 0 and lr_in_momentum:
        # lr multiplies the step *before* the trace, so an lr change only affects new contributions to the buffer
        parts += [
            optax.scale_by_learning_rate(learning_rate, flip_sign=False),
            optax.trace(decay=momentum),
            optax.scale(-1.0),
        ]
    elif momentum > 0:
        parts += [optax.trace(decay=momentum), optax.scale_by_learning_rate(learning_rate)]
    else:
        parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformation:
    """torch.optim.SGD (timm 'sgd': nesterov, 'momentum': classical) with coupled, masked weight decay."""
    if nesterov and momentum <= 0:
        raise ValueError("Nesterov momentum requires momentum > 0 (as torch.optim.SGD)")
    parts = []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay, mask))
    if momentum > 0:
        parts.append(optax.trace(decay=momentum, nesterov=nesterov))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)


def adamw(
    learning_rate: ScalarOrSchedule,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformation:
    """torch.optim.AdamW: decoupled weight decay p -= lr * weight_decay * p where `mask` is True."""
    b1, b2 = betas
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)


def _path_name(path: tuple) -> str:
    """Dotted name of a pytree path, e.g. 'blocks.0.1.conv_pw.kernel' (NNX Variable's '.value' dropped)."""
    keys = []
    for i, k in enumerate(path):
        if isinstance(k, jax.tree_util.GetAttrKey):
            if k.name == "value" and i == len(path) - 1:
                continue
            keys.append(k.name)
        elif isinstance(k, jax.tree_util.DictKey):
            keys.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            keys.append(str(k.idx))
        else:
            keys.append(str(k))
    return ".".join(keys)


def weight_decay_mask(params: Any, no_weight_decay: Collection[str] = (), exclude_1d: bool = True) -> Any:
    """Pytree of bools like `params`: True exactly where timm's `param_groups_weight_decay` applies decay.

    timm excludes (with `filter_bias_and_bn`/`exclude_1d`) params with ndim <= 1 or a name ending in '.bias', and
    any name matching a `no_weight_decay` fnmatch pattern. Names are dotted pytree paths.
    """

    def decays(path, leaf) -> bool:
        name = _path_name(path)
        is_excluded_1d = exclude_1d and (jnp.ndim(leaf) <= 1 or name.endswith(".bias"))
        return not (is_excluded_1d or any(fnmatch.fnmatch(name, p) for p in no_weight_decay))

    return jax.tree_util.tree_map_with_path(decays, params)


def clip_grad_norm(max_norm: float) -> optax.GradientTransformation:
    """torch.nn.utils.clip_grad_norm_: scale all grads by min(1, max_norm / (global_norm + 1e-6))."""

    def clip(updates, params=None):
        del params
        coef = jnp.minimum(max_norm / (optax.tree.norm(updates) + _TORCH_CLIP_NORM_EPS), 1.0)
        return jax.tree.map(lambda g: (g * coef).astype(g.dtype), updates)

    return optax.stateless(clip)


def clip_transform(clip_grad: float, clip_mode: str = "norm") -> optax.GradientTransformation:
    """timm's `dispatch_clip_grad(value=clip_grad, mode=clip_mode)` over all gradients, before the optimizer."""
    if clip_mode == "norm":
        return clip_grad_norm(clip_grad)
    if clip_mode == "value":
        return optax.clip(clip_grad)
    raise ValueError(f"clip_mode must be one of {CLIP_MODES} (agc is not implemented), got {clip_mode!r}")


PACKED_GROUPS = ("decay", "no_decay")


def _group(decay: Any) -> str:
    return "decay" if decay else "no_decay"


def _pack(tree: Any, decays: Any) -> dict[str, jax.Array]:
    """`{'decay': ..., 'no_decay': ...}`: the raveled leaves of `tree` concatenated per weight-decay group (a
    group without leaves is left out)."""
    leaves = jax.tree.leaves(tree)
    groups = {g: [] for g in PACKED_GROUPS}
    for leaf, decay in zip(leaves, jax.tree.leaves(decays), strict=True):
        groups[_group(decay)].append(jnp.ravel(leaf))
    return {g: jnp.concatenate(v) for g, v in groups.items() if v}  # no empty vectors: orbax cannot save them


def _offsets(tree: Any, decays: Any) -> tuple[int, ...]:
    """Where each leaf of `tree` starts in its group's vector of `_pack(tree, decays)`."""
    ends = dict.fromkeys(PACKED_GROUPS, 0)
    starts = []
    for leaf, decay in zip(jax.tree.leaves(tree), jax.tree.leaves(decays), strict=True):
        starts.append(ends[_group(decay)])
        ends[_group(decay)] += int(np.size(leaf))
    return tuple(starts)


def _offset_arrays(tree: Any, decays: Any) -> tuple[jax.Array, ...]:
    """`_offsets` as the int32 scalars a `PackedState` holds."""
    return tuple(jnp.asarray(s, jnp.int32) for s in _offsets(tree, decays))


def _unpack(flat: Mapping[str, jax.Array], like: Any, decays: Any, starts: Any) -> list[jax.Array]:
    """The leaves of `like` (shapes only; dtype of `flat`) cut out of the group vectors `flat` at `starts`."""
    return [
        jax.lax.dynamic_slice(flat[_group(d)], (s,), (int(np.size(leaf)),)).reshape(np.shape(leaf))
        for leaf, d, s in zip(jax.tree.leaves(like), jax.tree.leaves(decays), starts, strict=True)
    ]


class PackedState(NamedTuple):
    """State of a `packed` optimizer: the inner optimizer's state over the two flat vectors, and where each
    parameter leaf starts in its vector (int32 scalars, constant). The offsets are state, i.e. runtime operands
    of the jitted step, so that XLA compiles one unpacking kernel per leaf *shape*; as compile-time constants
    they make every leaf's kernel unique, a kernel per leaf for the train step's compile."""

    inner: optax.OptState
    offsets: tuple[jax.Array, ...]


def packed(inner: optax.GradientTransformation, decays: Callable[[Any], Any]) -> optax.GradientTransformation:
    """`inner` run on two flat vectors instead of the parameter tree: the leaves that `decays(tree)` marks True
    concatenated into `'decay'`, the others into `'no_decay'` (weight decay then applies by group: build `inner`
    with `mask=packed_decay_mask`). `decays` must depend on the tree's paths and shapes only (it is applied to
    the gradients as well as to the parameters).

    The maths per element is unchanged. The optimizer state is a few vectors instead of a few arrays per
    parameter, so a jitted train step has a handful of optimizer kernels rather than several per parameter shape.
    """

    def init_fn(params):
        mask = decays(params)
        return PackedState(inner.init(_pack(params, mask)), _offset_arrays(params, mask))

    def update_fn(updates, state, params=None):
        mask = decays(updates)
        leaves, treedef = jax.tree.flatten(updates)
        if len(state.offsets) != len(leaves):
            raise ValueError(
                f"packed optimizer state is for {len(state.offsets)} parameter arrays, the updates "
                f"have {len(leaves)}: initialise the optimizer with these parameters"
            )
        flat_params = None if params is None else _pack(params, mask)
        flat, inner_state = inner.update(_pack(updates, mask), state.inner, flat_params)
        pieces = _unpack(flat, updates, mask, state.offsets)
        out = [piece.astype(jnp.result_type(leaf)) for piece, leaf in zip(pieces, leaves, strict=True)]
        return jax.tree.unflatten(treedef, out), PackedState(inner_state, state.offsets)

    return optax.GradientTransformation(init_fn, update_fn)


def packed_decay_mask(flat: Mapping[str, Any]) -> dict[str, bool]:
    """The weight-decay mask of a `packed` optimizer's flat vectors: decay on `'decay'` only."""
    return {g: g == "decay" for g in flat}


def packs_on(platform: str) -> bool:
    """Whether train.py packs the optimizer state (`create_optimizer(pack=...)`) for a step compiled for
    `platform` ('cpu', 'gpu' or 'tpu'). Not on a TPU: there XLA moves fewer HBM bytes and holds fewer temporaries
    with the state per parameter. On a GPU per-parameter state costs a kernel per parameter array (BENCHMARKS.md)."""
    return platform != "tpu"


def decay_groups(
    weight_decay: float, filter_bias_and_bn: bool = True, no_weight_decay: Collection[str] = ()
) -> Callable[[Any], Any]:
    """`params -> tree of bools`: where `create_optimizer` with these arguments applies weight decay, i.e. how its
    packed state groups the parameters."""
    if weight_decay and (filter_bias_and_bn or no_weight_decay):
        return lambda p: weight_decay_mask(p, no_weight_decay, exclude_1d=filter_bias_and_bn)
    return lambda p: jax.tree.map(lambda _: bool(weight_decay), p)


def _is_packed_vectors(node: Any) -> bool:
    return isinstance(node, dict) and bool(node) and set(node) <= set(PACKED_GROUPS)


def relayout(state: Any, params: Any, decays: Callable[[Any], Any]) -> Any:
    """The optimizer state `state` in the other layout: a `packed` state (`create_optimizer(pack=True)`) as the
    same optimizer's per-parameter state (`pack=False`), or the reverse. The numbers are unchanged. `params`: the
    parameters (arrays or ShapeDtypeStructs) the state is for; `decays`: their grouping (`decay_groups`)."""
    mask = decays(params)
    treedef = jax.tree.structure(params)
    if isinstance(state, PackedState):
        starts = _offsets(params, mask)
        unpack = lambda flat: jax.tree.unflatten(treedef, _unpack(flat, params, mask, starts))  # noqa: E731
        return jax.tree.map(
            lambda n: unpack(n) if _is_packed_vectors(n) else n, state.inner, is_leaf=_is_packed_vectors
        )
    is_params = lambda node: jax.tree.structure(node) == treedef  # noqa: E731
    inner = jax.tree.map(lambda n: _pack(n, mask) if is_params(n) else n, state, is_leaf=is_params)
    return PackedState(inner, _offset_arrays(params, mask))


@dataclasses.dataclass(frozen=True)
class OptInfo:
    """How a timm `--opt` name maps to a builder: which of timm's common args apply, and fixed defaults."""

    build: Callable[..., optax.GradientTransformation]
    has_momentum: bool = False
    has_eps: bool = True
    has_betas: bool = False
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    extra_kwargs: tuple[str, ...] = ()  # optimizer-specific timm arguments accepted (e.g. via --opt-kwargs)


def _rmsproptf(learning_rate, *, eps=1e-10, alpha=0.9, **kw) -> optax.GradientTransformation:
    # timm's RMSpropTF default eps is 1e-10; the RA recipe passes --opt-eps .001
    return rmsprop_tf(learning_rate, decay=alpha, eps=eps, **kw)


OPTIMIZERS: Mapping[str, OptInfo] = {
    "rmsproptf": OptInfo(_rmsproptf, has_momentum=True, extra_kwargs=("alpha", "centered", "lr_in_momentum")),
    "sgd": OptInfo(sgd, has_momentum=True, has_eps=False, defaults={"nesterov": True}, extra_kwargs=("nesterov",)),
    "momentum": OptInfo(
        sgd, has_momentum=True, has_eps=False, defaults={"nesterov": False}, extra_kwargs=("nesterov",)
    ),
    "adamw": OptInfo(adamw, has_betas=True),
}


def create_optimizer(
    opt: str,
    learning_rate: ScalarOrSchedule,
    *,
    params: Any = None,
    weight_decay: float = 0.0,
    momentum: float | None = None,
    eps: float | None = None,
    betas: tuple[float, float] | None = None,
    filter_bias_and_bn: bool = True,
    no_weight_decay: Collection[str] = (),
    clip_grad: float | None = None,
    clip_mode: str = "norm",
    pack: bool = True,
    **kwargs: Any,
) -> optax.GradientTransformation:
    """timm's `create_optimizer_v2(model, opt, lr, weight_decay, momentum, ...)` (+ train.py's clipping) in optax.

    `learning_rate`: float or `count -> lr` (per update). Weight decay follows timm's grouping (see
    `weight_decay_mask`; it is computed from the parameter tree's paths and shapes, or with `pack=False` from
    `params` if given). `momentum` None means timm's 0.9 for optimizers with momentum. An argument an optimizer
    does not take raises (timm silently drops e.g. eps for sgd).

    With `pack` (the default) the optimizer runs on two flat vectors (decayed and not decayed parameters; see
    `packed`) and its state is those vectors' buffers; `pack=False` keeps the state shaped as the parameters
    (train.py picks by platform, `packs_on`; `relayout` converts a state between the two).
    """
    info = OPTIMIZERS.get(opt.lower())
    if info is None:
        raise ValueError(f"Unsupported optimizer {opt!r}; supported: {sorted(OPTIMIZERS)}")
    args = dict(info.defaults)
    for name, value, allowed in (
        ("momentum", momentum, info.has_momentum),
        ("eps", eps, info.has_eps),
        ("betas", betas, info.has_betas),
    ):
        if value is not None and not allowed:
            raise ValueError(f"Optimizer {opt!r} does not take {name}")
        if value is not None:
            args[name] = tuple(value) if name == "betas" else value
    if info.has_momentum:
        args.setdefault("momentum", 0.9)
    unknown = set(kwargs) - set(info.extra_kwargs)
    if unknown:
        raise TypeError(f"Optimizer {opt!r} got unsupported arguments {sorted(unknown)}")
    args.update(kwargs)
    masked = weight_decay and (filter_bias_and_bn or no_weight_decay)
    groups = decay_groups(weight_decay, filter_bias_and_bn, no_weight_decay)
    if pack:
        mask = packed_decay_mask if masked else None
    else:
        mask = (groups if params is None else groups(params)) if masked else None
    tx = info.build(learning_rate, weight_decay=weight_decay, mask=mask, **args)
    if clip_grad is not None:
        tx = optax.chain(clip_transform(clip_grad, clip_mode), tx)
    if pack:
        tx = packed(tx, groups)
    return tx
