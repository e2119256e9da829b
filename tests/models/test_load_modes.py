"""`load_model`'s modes against timm's own: pretrained adaptation with `new_classifier` is timm's train.py
`--pretrained-path` (`pretrained_cfg_overlay=dict(file=..., num_classes=-1)`: always a new classifier), without it
timm's `load_pretrained` (the classifier kept when the class count matches); a strict load whose classifier alone
misfits says so; `ModelMeta` records the tensors loaded, re-initialised and adapted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from mv2jax.convert import mv2jax_to_timm
from mv2jax.models import ClassifierMismatchError, load_model
from mv2jax.weights import CheckpointMismatchError

MODEL = "mobilenetv2_035"
CLASSIFIER = ("classifier.weight", "classifier.bias")
STEP_DIR = Path(__file__).resolve().parents[1] / "train" / "data" / "checkpoint_8886536" / "2"  # 10 classes


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """A timm-written file of MODEL with its pretrained cfg's 1000 classes (a classifier bias of its own: timm's
    fresh one is zeros)."""
    torch.manual_seed(3)
    tmodel = timm.create_model(MODEL)
    torch.nn.init.normal_(tmodel.classifier.bias)
    path = tmp_path_factory.mktemp("load_modes") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in tmodel.state_dict().items()}, str(path))
    return path, {k: v.numpy() for k, v in tmodel.state_dict().items()}


def _timm(path: Path, **kwargs) -> dict[str, np.ndarray]:
    """timm's model loaded as its train.py does with `--pretrained` (file=`path`) and `kwargs`."""
    overlay = dict(file=str(path), **kwargs.pop("overlay", {}))
    tmodel = timm.create_model(MODEL, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    return {k: v.detach().numpy() for k, v in tmodel.state_dict().items()}


@pytest.mark.parametrize("new_classifier", [True, False])
def test_new_classifier_is_timms_num_classes_minus_one_overlay(weights, new_classifier):
    path, source = weights
    ref = _timm(path, overlay=dict(num_classes=-1) if new_classifier else {})
    loaded = load_model(MODEL, pretrained=True, checkpoint_path=path, new_classifier=new_classifier)
    ours = mv2jax_to_timm(loaded.model)
    kept = [k for k in source if k not in CLASSIFIER or not new_classifier]
    for key in kept:  # as timm: everything loaded, the classifier too unless it is new
        np.testing.assert_array_equal(ref[key], source[key], err_msg=key)
        np.testing.assert_array_equal(ours[key], source[key], err_msg=key)
    assert loaded.meta.loaded == tuple(kept) and loaded.meta.adapted == ()
    assert loaded.meta.reinitialised == (CLASSIFIER if new_classifier else ())
    for key in loaded.meta.reinitialised:  # a new classifier in both, not the file's
        assert not np.allclose(ref[key], source[key]) and not np.allclose(ours[key], source[key]), key


def test_new_classifier_with_other_in_chans_adapts_the_stem_as_timm(weights):
    path, _ = weights
    ref = _timm(path, in_chans=1, overlay=dict(num_classes=-1))
    loaded = load_model(MODEL, pretrained=True, checkpoint_path=path, new_classifier=True, in_chans=1)
    assert loaded.meta.adapted == ("conv_stem.weight",) and loaded.meta.reinitialised == CLASSIFIER
    stem = mv2jax_to_timm(loaded.model)["conv_stem.weight"]
    np.testing.assert_allclose(stem, ref["conv_stem.weight"], rtol=1e-6, atol=0)
    summary = loaded.meta.weights_summary()
    assert summary == (
        f"weights: {path.absolute()}: 312 tensors loaded; re-initialised: classifier.weight, classifier.bias; "
        "adapted to the input channels: conv_stem.weight"
    )


def test_a_step_directory_of_the_same_class_count_keeps_its_classifier_unless_new(weights):
    same = load_model(MODEL, pretrained=True, checkpoint_path=STEP_DIR)
    new = load_model(MODEL, pretrained=True, checkpoint_path=STEP_DIR, new_classifier=True)
    assert same.meta.num_classes == new.meta.num_classes == 10
    assert same.meta.reinitialised == () and new.meta.reinitialised == CLASSIFIER
    kept, fresh = mv2jax_to_timm(same.model), mv2jax_to_timm(new.model)
    assert not np.allclose(kept["classifier.weight"], fresh["classifier.weight"])
    np.testing.assert_array_equal(kept["conv_head.weight"], fresh["conv_head.weight"])


def test_new_classifier_needs_pretrained(weights):
    with pytest.raises(ValueError, match="new_classifier .* pass pretrained=True"):
        load_model(MODEL, checkpoint_path=weights[0], new_classifier=True)


def test_a_strict_load_whose_classifier_alone_misfits_says_how_to_load_it(weights):
    path, _ = weights
    with pytest.raises(ClassifierMismatchError) as e:
        load_model(MODEL, checkpoint_path=path, num_classes=3)
    assert (e.value.checkpoint_classes, e.value.model_classes) == (1000, 3)
    message = str(e.value)
    assert "\n" not in message and "classifier.weight (1000, 1280) vs model (3, 1280)" in message
    assert "num_classes=1000" in message and "new_classifier=True" in message
    with pytest.raises(CheckpointMismatchError) as e:  # another variant: more than the classifier
        load_model("mobilenetv2_050", checkpoint_path=path, num_classes=3)
    assert not isinstance(e.value, ClassifierMismatchError)
