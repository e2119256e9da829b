"""mv2jax.train.optim against timm's optimizers built by timm's own factory (`create_optimizer_v2` on a torch
module, so timm's no-weight-decay grouping is used), stepping the same params with the same gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from timm.optim import create_optimizer_v2
from timm.utils import dispatch_clip_grad

from mv2jax.train.optim import (
    OPTIMIZERS,
    PackedState,
    create_optimizer,
    decay_groups,
    packs_on,
    relayout,
    rmsprop_tf,
    weight_decay_mask,
)

N_STEPS = 20
WEIGHT_DECAY = 0.05  # large, so a wrongly decayed (or undecayed) parameter shows


class Tiny(torch.nn.Module):
    """1-D (biases, BN affine), 2-D, 3-D and 4-D params; `pos_embed` is in `no_weight_decay()` as in timm ViTs."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 5)
        self.pos_embed = torch.nn.Parameter(torch.randn(1, 2, 4))

    def no_weight_decay(self):
        return {"pos_embed"}


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = Tiny().double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    return model


def names_by_param(model: torch.nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def run_timm(model, optimizer, grads, lrs, clip=None):
    for step in range(len(grads)):
        for group in optimizer.param_groups:
            group["lr"] = lrs[step]
        for n, p in model.named_parameters():
            p.grad = torch.from_numpy(grads[step][n].copy())
        if clip is not None:
            dispatch_clip_grad(model.parameters(), value=clip[0], mode=clip[1])
        optimizer.step()
    return {n: p.detach().numpy() for n, p in model.named_parameters()}


def run_optax(tx, params, grads):
    state = tx.init(params)

    @jax.jit
    def step(params, state, g):
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    for g in grads:
        params, state = step(params, state, {n: jnp.asarray(v) for n, v in g.items()})
    return {n: np.asarray(v) for n, v in params.items()}


def random_problem(model, scale=0.01, seed=1):
    """Initial params (name -> float64 array), N_STEPS random gradients, and an lr that changes every step."""
    rng = np.random.default_rng(seed)
    params = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    grads = [{n: scale * rng.standard_normal(v.shape) for n, v in params.items()} for _ in range(N_STEPS)]
    lrs = list(rng.uniform(0.001, 0.05, size=N_STEPS))
    return params, grads, lrs


def max_rel_err(got: dict, ref: dict, start: dict) -> float:
    """Largest error relative to the total movement of each tensor (not to the params, which would hide it)."""
    return max(np.abs(got[n] - ref[n]).max() / np.abs(ref[n] - start[n]).max() for n in ref)


def schedule_of(lrs):
    table = jnp.asarray(lrs)
    return lambda count: table[count]


def test_weight_decay_mask_is_timm_grouping_by_name():
    model = tiny_model()
    optimizer = create_optimizer_v2(model, "rmsproptf", lr=0.01, weight_decay=WEIGHT_DECAY)
    names = names_by_param(model)
    timm_decayed = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    params = {n: p.detach().numpy() for n, p in model.named_parameters()}
    mask = weight_decay_mask(params, no_weight_decay=model.no_weight_decay())
    assert {n for n, m in mask.items() if m} == timm_decayed == {"conv.weight", "fc.weight"}


def test_weight_decay_mask_names_nested_nnx_paths():
    from flax import nnx

    class Layer(nnx.Module):  # zeros instead of nnx.Conv/Linear/BatchNorm: only paths and shapes matter here
        def __init__(self, *kernel_shape):
            self.kernel = nnx.Param(np.zeros(kernel_shape, np.float32))
            self.bias = nnx.Param(np.zeros(kernel_shape[-1:], np.float32))

    class M(nnx.Module):
        def __init__(self):
            self.conv = Layer(3, 3, 3, 4)
            self.bn = nnx.Module()
            self.bn.scale = nnx.Param(np.ones(4, np.float32))
            self.bn.mean = nnx.BatchStat(np.zeros(4, np.float32))
            self.blocks = nnx.List([Layer(4, 2)])

    params = nnx.state(M(), nnx.Param)
    mask = weight_decay_mask(params, no_weight_decay=("blocks.0.*",))
    flat = {".".join(map(str, k)): v.get_value() for k, v in nnx.to_flat_state(mask)}
    assert {k for k, v in flat.items() if v} == {"conv.kernel"}
    optax.masked(optax.add_decayed_weights(0.1), mask).init(params)  # mask structure fits the params


@pytest.mark.parametrize("centered", [False, True])
def test_rmsprop_tf_matches_timm_with_lr_changing_every_step(centered):
    model = tiny_model()
    params, grads, lrs = random_problem(model)
    optimizer = create_optimizer_v2(
        model, "rmsproptf", lr=0.01, weight_decay=WEIGHT_DECAY, eps=1e-3, momentum=0.9, centered=centered
    )
    expected = run_timm(model, optimizer, grads, lrs)
    with jax.enable_x64(True):
        mask = weight_decay_mask(params, no_weight_decay=model.no_weight_decay())
        tx = rmsprop_tf(
            schedule_of(lrs), eps=1e-3, momentum=0.9, weight_decay=WEIGHT_DECAY, mask=mask, centered=centered
        )
        got = run_optax(tx, params, grads)
    err = max_rel_err(got, expected, params)
    assert err < 1e-10, err


def rmsprop_variant(lrs, mask, eps_in_sqrt=True, initial_scale=1.0, lr_in_buffer=True):
    """RMSpropTF with one detail changed, to show the parity test above detects each detail."""
    parts = [
        optax.add_decayed_weights(WEIGHT_DECAY, mask),
        optax.scale_by_rms(0.9, 1e-3, initial_scale=initial_scale, eps_in_sqrt=eps_in_sqrt),
    ]
    if lr_in_buffer:
        parts += [optax.scale_by_schedule(schedule_of(lrs)), optax.trace(0.9), optax.scale(-1.0)]
    else:
        parts += [optax.trace(0.9), optax.scale_by_learning_rate(schedule_of(lrs))]
    return optax.chain(*parts)


@pytest.mark.parametrize("change", ["eps_outside_sqrt", "square_avg_init_zero", "lr_outside_momentum"])
def test_each_rmsprop_tf_detail_is_detected(change):
    model = tiny_model()
    params, grads, lrs = random_problem(model)
    optimizer = create_optimizer_v2(model, "rmsproptf", lr=0.01, weight_decay=WEIGHT_DECAY, eps=1e-3)
    expected = run_timm(model, optimizer, grads, lrs)
    kwargs = {
        "eps_outside_sqrt": dict(eps_in_sqrt=False),
        "square_avg_init_zero": dict(initial_scale=0.0),
        "lr_outside_momentum": dict(lr_in_buffer=False),
    }[change]
    with jax.enable_x64(True):
        mask = weight_decay_mask(params, no_weight_decay=model.no_weight_decay())
        got = run_optax(rmsprop_variant(lrs, mask, **kwargs), params, grads)
    assert max_rel_err(got, expected, params) > 1e-4


@pytest.mark.parametrize(
    "opt,kwargs,clip",
    [
        ("rmsproptf", dict(eps=1e-3), None),
        ("rmsproptf", dict(), None),  # timm's RMSpropTF default eps (1e-10)
        ("sgd", dict(), None),
        ("momentum", dict(momentum=0.8), None),
        ("adamw", dict(betas=(0.8, 0.99), eps=1e-6), None),
        ("rmsproptf", dict(eps=1e-3), (0.05, "norm")),  # train.py --clip-grad (clips most steps at this scale)
        ("sgd", dict(), (0.003, "value")),
    ],
)
@pytest.mark.parametrize("pack", [True, False])
def test_create_optimizer_matches_timm_factory(opt, kwargs, clip, pack):
    model = tiny_model()
    params, grads, lrs = random_problem(model)
    optimizer = create_optimizer_v2(model, opt, lr=0.01, weight_decay=WEIGHT_DECAY, **kwargs)
    expected = run_timm(model, optimizer, grads, lrs, clip=clip)
    with jax.enable_x64(True):
        clip_args = dict(clip_grad=clip[0], clip_mode=clip[1]) if clip else {}
        tx = create_optimizer(
            opt,
            schedule_of(lrs),
            weight_decay=WEIGHT_DECAY,
            no_weight_decay=model.no_weight_decay(),
            pack=pack,
            **kwargs,
            **clip_args,
        )
        got = run_optax(tx, params, grads)
    err = max_rel_err(got, expected, params)
    assert err < 1e-10, err


@pytest.mark.parametrize(
    "opt,bad",
    [
        ("sgd", dict(eps=1e-3)),
        ("adamw", dict(momentum=0.9)),
        ("sgd", dict(betas=(0.9, 0.99))),
        ("rmsproptf", dict(foreach=True)),
        ("rmsproptf", dict(decoupled_decay=True)),
        ("adamw", dict(amsgrad=True)),
    ],
)
def test_create_optimizer_refuses_arguments_it_would_drop(opt, bad):
    with pytest.raises((ValueError, TypeError)):
        create_optimizer(opt, 0.1, **bad)


def test_unknown_optimizer_and_clip_mode_raise():
    with pytest.raises(ValueError):
        create_optimizer("lookahead_rmsproptf", 0.1)
    with pytest.raises(ValueError):
        create_optimizer("sgd", 0.1, clip_grad=1.0, clip_mode="agc")


def test_packed_state_is_two_vectors_and_its_offsets():
    """The default (packed) optimizer keeps its buffers as one vector per weight-decay group, with constant
    int32 offsets of each leaf; a parameter tree it was not initialised for is refused."""
    params = {"a": jnp.ones((3, 2)), "b": jnp.ones((4,)), "c": jnp.ones((1, 1, 2, 5))}
    tx = create_optimizer("rmsproptf", 0.1, weight_decay=1e-5, eps=1e-3)
    state = tx.init(params)
    assert isinstance(state, PackedState)
    nu = optax.tree_utils.tree_get(state, "nu")
    assert {k: v.shape for k, v in nu.items()} == {"decay": (16,), "no_decay": (4,)}  # 'b' is 1-D: no decay
    assert [int(o) for o in state.offsets] == [0, 0, 6]
    updates, state = jax.jit(tx.update)(params, state, params)
    assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)
    with pytest.raises(ValueError, match="initialise the optimizer with these parameters"):
        tx.update({"a": params["a"]}, state, {"a": params["a"]})


@pytest.mark.parametrize("weight_decay", [0.0, WEIGHT_DECAY])
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_relayout_converts_a_state_between_the_packed_and_per_parameter_layouts(opt, weight_decay):
    """After the same updates, the packed state relaid out is the per-parameter one and the reverse (float64: the
    two layouts do the same arithmetic); a round trip gives back every array exactly."""
    model = tiny_model()
    params, grads, _ = random_problem(model)
    no_decay = model.no_weight_decay()
    with jax.enable_x64(True):
        states = {}
        for pack in (True, False):
            tx = create_optimizer(opt, 0.01, weight_decay=weight_decay, no_weight_decay=no_decay, pack=pack)
            p, state = {n: jnp.asarray(v) for n, v in params.items()}, None
            state = tx.init(p)
            for g in grads:
                updates, state = tx.update({n: jnp.asarray(v) for n, v in g.items()}, state, p)
                p = optax.apply_updates(p, updates)
            states[pack] = state
        groups = decay_groups(weight_decay, no_weight_decay=no_decay)
        for pack in (True, False):
            other = relayout(states[pack], params, groups)
            assert jax.tree.structure(other) == jax.tree.structure(states[not pack])
            for got, want in zip(jax.tree.leaves(other), jax.tree.leaves(states[not pack]), strict=True):
                np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=0)
            back = relayout(other, params, groups)
            for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(states[pack]), strict=True):
                np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert isinstance(states[True], PackedState) and not isinstance(states[False], PackedState)


def test_train_py_packs_the_optimizer_state_on_cpu_and_gpu_not_on_tpu_unless_told():
    from mv2jax.train.config import parse_config
    from mv2jax.train.run import _packs

    assert packs_on("cpu") and packs_on("gpu") and not packs_on("tpu")
    auto, packed, per_param = (parse_config(["--opt-layout", v]) for v in ("auto", "packed", "per-param"))
    assert [_packs(c, "tpu") for c in (auto, packed, per_param)] == [False, True, False]
    assert [_packs(c, "gpu") for c in (auto, packed, per_param)] == [True, True, False]
