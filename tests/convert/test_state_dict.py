"""timm state dict <-> mv2jax: exact round trip, strict loading, and one-line errors listing every mismatch."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

import mv2jax
from mv2jax.convert import CheckpointMismatchError, mv2jax_to_timm, read_checkpoint, timm_to_mv2jax
from tests.timm_reference import state_dict_numpy, timm_model


@pytest.mark.parametrize("name", ["mobilenetv2_035", "mobilenetv2_120d"])
def test_round_trip_timm_to_mv2jax_to_timm_reproduces_state_dict_exactly(name):
    ref = state_dict_numpy(timm_model(name, seed=5))
    exported = mv2jax_to_timm(timm_to_mv2jax(ref, mv2jax.create_model(name)))
    assert list(exported) == list(ref)  # same keys in timm's order
    for k, v in ref.items():
        assert exported[k].dtype == v.dtype and exported[k].shape == v.shape, k
        np.testing.assert_array_equal(exported[k], v, err_msg=k)


def test_export_of_a_fresh_model_loads_strictly_into_timm():
    exported = mv2jax_to_timm(mv2jax.create_model("mobilenetv2_050", num_classes=7))
    tmodel = timm.create_model("mobilenetv2_050", num_classes=7)
    result = tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_checkpoint_without_num_batches_tracked_loads():
    """Checkpoints saved before PyTorch counted batches lack `num_batches_tracked`: every other tensor loads
    exactly, and the counters read 0, as in a timm model loading the same checkpoint."""
    full = state_dict_numpy(timm_model("mobilenetv2_035", seed=2))
    ref = {k: v for k, v in full.items() if "num_batches" not in k}
    assert len(ref) < len(full) and all(full[k].any() for k in full if "num_batches" in k)  # counters were set
    exported = mv2jax_to_timm(timm_to_mv2jax(ref, mv2jax.create_model("mobilenetv2_035")))
    assert set(exported) == set(full)
    for k, v in ref.items():
        np.testing.assert_array_equal(exported[k], v, err_msg=k)
    tmodel = timm.create_model("mobilenetv2_035")
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in ref.items()}, strict=False)
    counters = {k: v.numpy() for k, v in tmodel.state_dict().items() if "num_batches" in k}
    assert counters and all(np.array_equal(exported[k], counters[k]) and not counters[k].any() for k in counters)


def test_checkpoint_of_another_variant_lists_wrong_shapes_in_one_line():
    other = state_dict_numpy(timm.create_model("mobilenetv2_050"))
    with pytest.raises(CheckpointMismatchError) as e:
        timm_to_mv2jax(other, mv2jax.create_model("mobilenetv2_035"), model_name="mobilenetv2_035")
    msg = str(e.value)
    assert "\n" not in msg and "mobilenetv2_035" in msg and "wrong shapes" in msg
    assert "conv_stem.weight (16, 3, 3, 3) vs model (16, 3, 3, 3)" not in msg  # only real mismatches listed
    assert "(+" in msg  # counts the ones not spelled out


def test_deeper_variant_checkpoint_reports_unexpected_and_shapes():
    other = state_dict_numpy(timm.create_model("mobilenetv2_110d"))
    with pytest.raises(CheckpointMismatchError, match=r"unexpected \(blocks\.1\.2\.") as e:
        timm_to_mv2jax(other, mv2jax.create_model("mobilenetv2_100"))
    assert "\n" not in str(e.value)


def test_missing_and_unexpected_keys_are_all_listed_and_nothing_is_loaded():
    model = mv2jax.create_model("mobilenetv2_035")
    before = mv2jax_to_timm(model)
    sd = state_dict_numpy(timm_model("mobilenetv2_035"))
    del sd["bn2.running_var"], sd["classifier.bias"]
    sd["head.fc.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(CheckpointMismatchError) as e:
        timm_to_mv2jax(sd, model)
    msg = str(e.value)
    assert "2 missing (bn2.running_var, classifier.bias)" in msg and "1 unexpected (head.fc.weight)" in msg
    after = mv2jax_to_timm(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # a failed load changes nothing


def test_non_strict_load_skips_missing_and_unexpected_but_not_wrong_shapes():
    model = mv2jax.create_model("mobilenetv2_035")
    sd = state_dict_numpy(timm_model("mobilenetv2_035"))
    del sd["classifier.bias"]
    sd["extra"] = np.zeros(1, np.float32)
    timm_to_mv2jax(sd, model, strict=False)
    np.testing.assert_array_equal(mv2jax_to_timm(model)["conv_stem.weight"], sd["conv_stem.weight"])
    sd["conv_stem.weight"] = sd["conv_stem.weight"][:8]
    with pytest.raises(CheckpointMismatchError, match="wrong shapes"):
        timm_to_mv2jax(sd, model, strict=False)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_read_checkpoint_reads_what_timm_saves(tmp_path, suffix):
    tmodel = timm_model("mobilenetv2_035")
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tmodel.state_dict(), str(path))
    else:  # a training checkpoint, as timm's CheckpointSaver writes it, wrapped and DataParallel-prefixed
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in tmodel.state_dict().items()}}, path)
    sd = read_checkpoint(path)
    ref = state_dict_numpy(tmodel)
    assert set(sd) == set(ref) and all(np.array_equal(sd[k], ref[k]) for k in ref)


@pytest.mark.parametrize("name", ["model.safetensors", "model.pth", "notes.txt"])
def test_non_checkpoint_file_gives_a_one_line_error(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"this is not a checkpoint\x00\x01")
    with pytest.raises(ValueError) as e:
        read_checkpoint(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        read_checkpoint(tmp_path / "nothing.safetensors")
