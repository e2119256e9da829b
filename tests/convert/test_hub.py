"""Loading timm's Hub checkpoints through huggingface_hub's cache, offline. The cache is filled with files
that timm itself writes (`save_for_hf`: model.safetensors + config.json), laid out as the Hub cache does."""

from __future__ import annotations

import shutil

import huggingface_hub.constants as hf_constants
import numpy as np
import pytest
import timm
import torch
from timm.models._hub import save_for_hf

import mv2jax
from tests.timm_reference import forward, random_nhwc, rel_err, run_timm, timm_model

NAME, TAG = "mobilenetv2_050", "lamb_in1k"
REPO = f"timm/{NAME}.{TAG}"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """timm's model and the directory `save_for_hf` wrote for it."""
    tmodel = timm_model(NAME, seed=11)
    out = tmp_path_factory.mktemp("hf_export")
    save_for_hf(tmodel, str(out), safe_serialization=True)
    return tmodel, out


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, saved):
    """An offline huggingface_hub cache holding REPO at a fake revision."""
    _, export = saved
    repo_dir = tmp_path / f"models--{REPO.replace('/', '--')}"
    revision = "0" * 40
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    shutil.copytree(export, repo_dir / "snapshots" / revision)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return tmp_path


@pytest.mark.parametrize("name", [f"{NAME}.{TAG}", NAME, f"hf-hub:{REPO}"])
def test_pretrained_from_hub_cache_gives_timm_logits(hub_cache, saved, name):
    tmodel, _ = saved
    model = mv2jax.create_model(name, pretrained=True).eval()
    x = random_nhwc()
    ref64, ref32 = run_timm(tmodel, x, dtype=torch.float64), run_timm(tmodel, x)
    assert rel_err(forward(model, x), ref64) <= 2 * rel_err(ref32, ref64)
    assert model.pretrained_cfg["hf_hub_id"] == REPO


def test_hf_hub_name_takes_preprocessing_from_the_repo_config(hub_cache):
    model = mv2jax.create_model(f"hf-hub:{REPO}", pretrained=True)
    assert model.pretrained_cfg["input_size"] == (3, 224, 224)
    assert model.pretrained_cfg["interpolation"] == "bicubic" and model.pretrained_cfg["crop_pct"] == 0.875


def test_pretrained_with_other_num_classes_reinitialises_only_the_classifier(hub_cache, saved):
    tmodel, _ = saved
    model = mv2jax.create_model(NAME, pretrained=True, num_classes=10)
    ref = timm.create_model(
        NAME, pretrained=True, num_classes=10, pretrained_cfg_overlay={"file": str(saved[1] / "model.safetensors")}
    )
    ours = mv2jax.convert.mv2jax_to_timm(model)
    for k, v in ref.state_dict().items():
        if not k.startswith("classifier"):
            np.testing.assert_array_equal(ours[k], v.numpy(), err_msg=k)
    assert ours["classifier.weight"].shape == (10, 1280)


@pytest.mark.parametrize("in_chans", [1, 4])
def test_pretrained_with_other_in_chans_adapts_the_stem_as_timm(hub_cache, saved, in_chans):
    model = mv2jax.create_model(NAME, pretrained=True, in_chans=in_chans)
    ref = timm.create_model(
        NAME, pretrained=True, in_chans=in_chans, pretrained_cfg_overlay={"file": str(saved[1] / "model.safetensors")}
    )
    ours = mv2jax.convert.mv2jax_to_timm(model)["conv_stem.weight"]
    np.testing.assert_allclose(ours, ref.conv_stem.weight.detach().numpy(), rtol=1e-6, atol=0)


def test_features_only_pretrained_loads_the_trunk(hub_cache, saved):
    tmodel, _ = saved
    model = mv2jax.create_model(NAME, pretrained=True, features_only=True).eval()
    x = random_nhwc()
    tfeat = timm.create_model(
        NAME, features_only=True, pretrained=True, pretrained_cfg_overlay={"file": str(saved[1] / "model.safetensors")}
    ).eval()
    for ours, ref in zip(forward(model, x), run_timm(tfeat, x), strict=True):
        assert rel_err(ours, ref) < 1e-5


def test_unreachable_hub_says_which_file_to_download_and_how_to_pass_it(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError) as e:
        mv2jax.create_model("mobilenetv2_100.ra_in1k", pretrained=True)
    msg = str(e.value)
    assert "\n" not in msg
    assert "model.safetensors" in msg and "timm/mobilenetv2_100.ra_in1k" in msg and "checkpoint_path" in msg


def test_checkpoint_path_instead_of_the_hub(saved):
    tmodel, export = saved
    model = mv2jax.create_model(NAME, pretrained=True, checkpoint_path=export / "model.safetensors").eval()
    x = random_nhwc(size=48)
    assert rel_err(forward(model, x), run_timm(tmodel, x, dtype=torch.float64)) < 1e-5


def test_untrained_tag_has_no_pretrained_weights():
    with pytest.raises(ValueError, match="mobilenetv2_035.untrained has no pretrained weights"):
        mv2jax.create_model("mobilenetv2_035", pretrained=True)
