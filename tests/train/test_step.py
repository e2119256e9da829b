"""The jitted train / eval steps against timm's own training pieces (RMSpropTF from `create_optimizer_v2`,
`LabelSmoothingCrossEntropy`, the step scheduler stepped per update, `ModelEmaV3` updated with
`step=num_updates`), driven in timm train.py's order; plus AMP, the soft-target path, NaN detection and
compile-once checks.

A random network in train mode is chaotic (timm's own float32 and float64 runs drift apart by ~1e-1 on single
tensors within 5 steps), so exactness is shown in float64 on both sides, and float32 is held to timm's own
float32 error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import accuracy

from mv2jax.convert import mv2jax_to_timm
from mv2jax.train.state import ema_variables, model_from_state
from mv2jax.train.step import _global_norm, check_finite, make_eval_step, train_loss
from tests.train.reference import (
    NUM_CLASSES,
    Recipe,
    global_rel_error,
    make_batches,
    mv2jax_state_dicts,
    mv2jax_train,
    rel_errors,
    tiny_mv2jax,
    worst,
)
from tests.train.timm_side import load_timm, state_dict_numpy, timm_train, tiny_timm, to_torch

pytestmark = pytest.mark.numerics

STEPS = 5
RECIPE = Recipe()
REPO = Path(__file__).resolve().parents[2]
FLOAT64_WORKER = Path(__file__).with_name("float64_worker.py")
TIMEOUT_S = 600


@pytest.fixture(scope="module", autouse=True)
def float64_run(request, tmp_path_factory):
    """Starts float64_worker.py (the full network in float64: the slowest compile here) if its test is selected,
    so it runs beside the other tests (its test is the last of the file); returns a function waiting for it."""
    if not any(item.name == "test_five_steps_equal_timm_in_float64" for item in request.session.items):
        yield None
        return
    log = tmp_path_factory.mktemp("float64") / "worker.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(FLOAT64_WORKER)],
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def result() -> dict:
        proc.wait(timeout=TIMEOUT_S)
        text = log.read_text()
        assert proc.returncode == 0, text[-4000:]
        return json.loads(next(ln for ln in text.splitlines() if ln.startswith("RESULT "))[len("RESULT ") :])

    yield result
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def batches():
    return make_batches(STEPS, 8, 32)


@pytest.fixture(scope="module")
def tiny_fp32(batches):
    """The tiny network trained 5 steps in float32 by mv2jax, and timm's float32 / float64 runs of it."""
    tmodel = tiny_timm()
    graphdef, state, metrics, step, recompiles = mv2jax_train(load_timm(tiny_mv2jax(), tmodel), batches, RECIPE)
    return dict(
        tmodel=tmodel,
        graphdef=graphdef,
        state=state,
        metrics=metrics,
        step=step,
        recompiles=recompiles,
        timm64=timm_train(tmodel, batches, RECIPE, torch.float64),
        timm32=timm_train(tmodel, batches, RECIPE, torch.float32),
    )


def test_float32_error_within_twice_timms_own(tiny_fp32):
    ours, ours_ema = mv2jax_state_dicts(tiny_fp32["graphdef"], tiny_fp32["state"])
    (ref, ref_ema, *_), (t32, t32_ema, *_) = tiny_fp32["timm64"], tiny_fp32["timm32"]
    for what, a, b, t in (("model", ours, ref, t32), ("ema", ours_ema, ref_ema, t32_ema)):
        ours_err, timm_err = global_rel_error(a, b), global_rel_error(t, b)
        print(
            f"{what}: float32 vs timm float64, L2 over the state: mv2jax {ours_err:.2e}, timm {timm_err:.2e}; "
            f"worst tensor: mv2jax {worst(rel_errors(a, b))}, timm {worst(rel_errors(t, b))}"
        )
        assert ours_err <= 2 * timm_err


def test_train_step_compiles_once(tiny_fp32):
    assert tiny_fp32["recompiles"] == 0  # steps 2..5 with new batches: no XLA compilation at all
    assert tiny_fp32["step"]._cache_size() == 1


def test_soft_target_batches_take_soft_target_cross_entropy():
    """train.py with mixup: SoftTargetCrossEntropy on `target`; without: LabelSmoothingCrossEntropy on `label`."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, NUM_CLASSES)).astype(np.float32) * 3
    labels = rng.integers(0, NUM_CLASSES, 6)
    targets = rng.dirichlet(np.ones(NUM_CLASSES), 6).astype(np.float32)
    t_logits = torch.from_numpy(logits)
    soft = train_loss(jnp.asarray(logits, jnp.bfloat16), {"label": labels, "target": targets}, 0.1)
    hard = train_loss(jnp.asarray(logits), {"label": labels}, 0.1)
    assert soft.dtype == hard.dtype == jnp.float32
    bf16_logits = torch.from_numpy(np.array(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32)))
    np.testing.assert_allclose(soft, SoftTargetCrossEntropy()(bf16_logits, torch.from_numpy(targets)), rtol=1e-6)
    np.testing.assert_allclose(hard, LabelSmoothingCrossEntropy(0.1)(t_logits, torch.from_numpy(labels)), rtol=1e-6)


def test_non_finite_step_is_flagged_and_check_finite_raises(tiny_fp32, batches):
    metrics = tiny_fp32["metrics"]
    check_finite(metrics[-1], STEPS)  # a good step passes
    bad = dict(batches[0], image=batches[0]["image"].copy())
    bad["image"][0, 0, 0, 0] = np.inf
    state, bad_metrics = tiny_fp32["step"](jax.tree.map(jnp.copy, tiny_fp32["state"]), bad)
    assert not bool(bad_metrics["finite"])
    with pytest.raises(FloatingPointError, match=r"step 6 .*lower learning rate") as info:
        check_finite(bad_metrics, 6)
    assert "\n" not in str(info.value)


def test_eval_step_matches_timm_validate_for_raw_and_ema_weights(tiny_fp32, batches):
    graphdef, state = tiny_fp32["graphdef"], tiny_fp32["state"]
    evaluate = make_eval_step(graphdef, state.rng_state)
    image = batches[0]["image"]
    mask = np.arange(8) < 5  # the last 3 examples are padding
    for use_ema in (False, True):
        weights = state.ema if use_ema else ema_variables(state.params, state.batch_stats)
        tmodel = tiny_timm()
        tmodel.load_state_dict(
            {
                k: torch.from_numpy(v)
                for k, v in mv2jax_to_timm(model_from_state(graphdef, state, use_ema=use_ema)).items()
            }
        )
        with torch.no_grad():
            logits = tmodel.eval()(to_torch(image, torch.float32))[:5]
        label = np.asarray(logits.argmax(-1))
        label[:2] = batches[0]["label"][:2]  # some right, some wrong
        padded_label = np.concatenate([label, [0, 0, 0]])
        out = evaluate(weights["params"], weights["batch_stats"], {"image": image, "label": padded_label, "mask": mask})
        target = torch.from_numpy(label)
        top1, top5 = accuracy(logits, target, topk=(1, 5))
        assert float(out["count"]) == 5
        np.testing.assert_allclose(
            float(out["loss_sum"]) / 5, torch.nn.functional.cross_entropy(logits, target).item(), rtol=1e-5
        )
        assert 100 * float(out["top1"]) / 5 == pytest.approx(top1.item())
        assert 100 * float(out["top5"]) / 5 == pytest.approx(top5.item())


@pytest.mark.parametrize("conv_impl", ["cpu", "xla"])
def test_amp_bfloat16_compute_float32_params_error_within_twice_timm_autocast(tiny_fp32, batches, conv_impl):
    """`--amp`: bfloat16 compute, float32 params and loss, on each backend ('xla' is what accelerators run). The
    parameter change over 5 steps is compared with timm float64's; the error must stay within 2x that of timm
    under `torch.autocast(bfloat16)`."""
    tmodel = tiny_fp32["tmodel"]
    graphdef, state, metrics, step, _ = mv2jax_train(
        load_timm(tiny_mv2jax(dtype=jnp.bfloat16, conv_impl=conv_impl), tmodel), batches, RECIPE
    )
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    assert all(m["loss"].dtype == np.float32 and m["finite"] for m in metrics)
    hlo = step.lower(state, batches[0]).as_text().splitlines()
    pointwise = "dot_general" if conv_impl == "cpu" else "convolution"  # 'cpu' runs 1x1 convs as matmuls
    assert any(pointwise in line and "bf16" in line for line in hlo)  # the 1x1 convs run in bfloat16
    initial, ref = state_dict_numpy(tmodel), tiny_fp32["timm64"][0]
    timm_amp, *_ = timm_train(tmodel, batches, RECIPE, torch.float32, amp=True)
    ours, _ = mv2jax_state_dicts(graphdef, state)
    change = lambda sd: {k: np.float64(sd[k]) - initial[k] for k, _ in tmodel.named_parameters()}  # noqa: E731
    ours_err, timm_err = global_rel_error(change(ours), change(ref)), global_rel_error(change(timm_amp), change(ref))
    print(
        f"bfloat16 vs timm float64, parameter change over {STEPS} steps: mv2jax {ours_err:.3f}, "
        f"timm autocast {timm_err:.3f}"
    )
    assert ours_err <= 2 * timm_err


# last in the file: the float64 worker started with the module runs while the tests above do
def test_five_steps_equal_timm_in_float64(float64_run):
    result = float64_run()
    print(
        f"float64, {STEPS} steps of mobilenetv2_035: params+BN {result['model']}, EMA {result['ema']}; "
        f"training moved the state by {result['moved']:.1e}"
    )
    assert result["dtype"] == "float64"
    # worst relative error of any tensor; measured 2.4e-10 (model), 1.8e-10 (EMA): the loss is float64 too
    assert result["model"][1] < 1e-8 and result["ema"][1] < 1e-8
    assert result["moved"] > 1e-4 and result["num_batches_tracked_equal"]
    # the lr changes every update; rtol of the float32 `lr` metric
    np.testing.assert_allclose(result["lrs"], result["timm_lrs"], rtol=1e-6)
    assert len(set(result["timm_lrs"])) == STEPS
    np.testing.assert_allclose(result["losses"], result["timm_losses"], rtol=1e-11)  # measured 2.2e-13
    assert result["recompiles"] == 0


@pytest.mark.parametrize("flat", [True, False])
def test_global_norm_flat_or_per_leaf_is_the_float64_norm_within_float32_summation(flat):
    """grad_norm / param_norm in either form (`StepConfig.flat_norms`: concatenated on the CPU and GPUs, per leaf
    on TPUs) is the norm of all leaves, to float32 summation error (eps32 x log2 of the element count)."""
    rng = np.random.default_rng(0)
    shapes = [(3, 3, 1, 96), (96,), (1, 1, 96, 24), (1280, 100), (7,)]
    tree = {f"p{i}": jnp.asarray(rng.normal(size=s) * 10.0 ** (i - 2), jnp.float32) for i, s in enumerate(shapes)}
    values = np.concatenate([np.asarray(x, np.float64).ravel() for x in tree.values()])
    want = np.sqrt(np.sum(values**2))
    got = float(jax.jit(_global_norm, static_argnums=1)(tree, flat))
    bound = np.finfo(np.float32).eps * np.log2(values.size)
    assert abs(got - want) <= bound * want, (got, want)
