"""timm's optimizers as optax chains: RMSpropTF, SGD (nesterov / classical momentum), AdamW; timm's weight-decay
grouping as an optax mask; timm's gradient clipping.

Learning rates are per update; a schedule is a `count -> lr` function of the 0-based update index (optax's count).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Collection, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

ScalarOrSchedule = float | Callable[[Any], Any]
MaskOrFn = Any | Callable[[Any], Any] | None
CLIP_MODES = ('norm', 'value')
# torch.nn.utils.clip_grad_norm_ divides by (total_norm + 1e-6)
_TORCH_CLIP_NORM_EPS = 1e-6


def rmsprop_tf(
        learning_rate: ScalarOrSchedule, decay: float = 0.9, eps: float = 1e-3, momentum: float = 0.9,
        weight_decay: float = 0., mask: MaskOrFn = None, centered: bool = False, lr_in_momentum: bool = True,
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
        learning_rate: ScalarOrSchedule, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 0.,
        mask: MaskOrFn = None,
) -> optax.GradientTransformation:
    """torch.optim.SGD (timm 'sgd': nesterov, 'momentum': classical) with coupled, masked weight decay."""
    if nesterov and momentum <= 0:
        raise ValueError('Nesterov momentum requires momentum > 0 (as torch.optim.SGD)')
    parts = []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay, mask))
    if momentum > 0:
        parts.append(optax.trace(decay=momentum, nesterov=nesterov))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)


def adamw(
        learning_rate: ScalarOrSchedule, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        weight_decay: float = 0., mask: MaskOrFn = None,
) -> optax.GradientTransformation:
    """torch.optim.AdamW: decoupled weight decay p -= lr * weight_decay * p where `mask` is True."""
    b1, b2 = betas
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)


def _path_name(path: tuple) -> str:
    """Dotted name of a pytree path, e.g. 'blocks.0.1.conv_pw.kernel' (NNX Variable's '.value' dropped)."""
    keys = []
    for i, k in enumerate(path):
        if isinstance(k, jax.tree_util.GetAttrKey):
            if k.name == 'value' and i == len(path) - 1:
                continue
            keys.append(k.name)
        elif isinstance(k, jax.tree_util.DictKey):
            keys.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            keys.append(str(k.idx))
        else:
            keys.append(str(k))
    return '.'.join(keys)


def weight_decay_mask(params: Any, no_weight_decay: Collection[str] = (), exclude_1d: bool = True) -> Any:
    """Pytree of bools like `params`: True exactly where timm's `param_groups_weight_decay` applies decay.

    timm excludes (with `filter_bias_and_bn`/`exclude_1d`) params with ndim <= 1 or a name ending in '.bias', and
    any name matching a `no_weight_decay` fnmatch pattern. Names are dotted pytree paths.
    """
    def decays(path, leaf) -> bool:
        name = _path_name(path)
        is_excluded_1d = exclude_1d and (jnp.ndim(leaf) <= 1 or name.endswith('.bias'))
        return not (is_excluded_1d or any(fnmatch.fnmatch(name, p) for p in no_weight_decay))

    return jax.tree_util.tree_map_with_path(decays, params)


def clip_grad_norm(max_norm: float) -> optax.GradientTransformation:
    """torch.nn.utils.clip_grad_norm_: scale all grads by min(1, max_norm / (global_norm + 1e-6))."""
    def clip(updates, params=None):
        del params
        coef = jnp.minimum(max_norm / (optax.tree.norm(updates) + _TORCH_CLIP_NORM_EPS), 1.0)
        return jax.tree.map(lambda g: (g * coef).astype(g.dtype), updates)

    return optax.stateless(clip)


def clip_transform(clip_grad: float, clip_mode: str = 'norm') -> optax.GradientTransformation:
    """timm's `dispatch_clip_grad(value=clip_grad, mode=clip_mode)` over all gradients, before the optimizer."""
    if clip_mode == 'norm':
        return clip_grad_norm(clip_grad)
    if clip_mode == 'value':
        return optax.clip(clip_grad)
    raise ValueError(f'clip_mode must be one of {CLIP_MODES} (agc is not implemented), got {clip_mode!r}')


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
    'rmsproptf': OptInfo(_rmsproptf, has_momentum=True, extra_kwargs=('alpha', 'centered', 'lr_in_momentum')),
    'sgd': OptInfo(sgd, has_momentum=True, has_eps=False, defaults={'nesterov': True}, extra_kwargs=('nesterov',)),
    'momentum': OptInfo(
        sgd, has_momentum=True, has_eps=False, defaults={'nesterov': False}, extra_kwargs=('nesterov',)),
    'adamw': OptInfo(adamw, has_betas=True),
}


def create_optimizer(
        opt: str, learning_rate: ScalarOrSchedule, *, params: Any = None, weight_decay: float = 0.,
        momentum: float | None = None, eps: float | None = None, betas: tuple[float, float] | None = None,
        filter_bias_and_bn: bool = True, no_weight_decay: Collection[str] = (), clip_grad: float | None = None,
        clip_mode: str = 'norm', **kwargs: Any,
) -> optax.GradientTransformation:
    """timm's `create_optimizer_v2(model, opt, lr, weight_decay, momentum, ...)` (+ train.py's clipping) in optax.

    `learning_rate`: float or `count -> lr` (per update). Weight decay follows timm's grouping (see
    `weight_decay_mask`); pass `params` to build the mask now, else it is computed from the params at init.
    `momentum` None means timm's 0.9 for optimizers with momentum. An argument an optimizer does not take raises
    (timm silently drops e.g. eps for sgd).
    """
    info = OPTIMIZERS.get(opt.lower())
    if info is None:
        raise ValueError(f'Unsupported optimizer {opt!r}; supported: {sorted(OPTIMIZERS)}')
    args = dict(info.defaults)
    for name, value, allowed in (('momentum', momentum, info.has_momentum), ('eps', eps, info.has_eps),
                                 ('betas', betas, info.has_betas)):
        if value is not None and not allowed:
            raise ValueError(f'Optimizer {opt!r} does not take {name}')
        if value is not None:
            args[name] = tuple(value) if name == 'betas' else value
    if info.has_momentum:
        args.setdefault('momentum', 0.9)
    unknown = set(kwargs) - set(info.extra_kwargs)
    if unknown:
        raise TypeError(f'Optimizer {opt!r} got unsupported arguments {sorted(unknown)}')
    args.update(kwargs)
    mask = None
    if weight_decay and (filter_bias_and_bn or no_weight_decay):
        mask_fn = lambda p: weight_decay_mask(p, no_weight_decay, exclude_1d=filter_bias_and_bn)
        mask = mask_fn if params is None else mask_fn(params)
    tx = info.build(learning_rate, weight_decay=weight_decay, mask=mask, **args)
    if clip_grad is not None:
        tx = optax.chain(clip_transform(clip_grad, clip_mode), tx)
    return tx
