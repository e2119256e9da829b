"""convert_weights.py: timm file -> mv2jax checkpoint -> timm file is exact and loads strictly into timm (also as a
Hub-style directory with timm's config.json), --verify passes on good weights and fails on bad ones, and every bad
input is one line on stderr with exit code 2. No network: timm writes the weights locally."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from flax import nnx
from safetensors.numpy import load_file
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file

import mv2jax
from mv2jax.convert import cli, from_timm, read_checkpoint, read_orbax, to_timm
from mv2jax.convert.verify import top_k_agreement
from mv2jax.models import ModelMeta
from mv2jax.weights import orbax_io, state_dict
from tests.timm_reference import state_dict_numpy, timm_model

REPO = Path(__file__).resolve().parents[2]
NAME = "mobilenetv2_035"  # the smallest variant


def run(*argv: str | Path) -> int:
    return cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """A timm checkpoint file with random weights and randomised BN statistics, as timm saves it."""
    tmodel = timm_model(NAME, seed=1)
    path = tmp_path_factory.mktemp("timm") / "model.safetensors"
    save_file(tmodel.state_dict(), str(path))
    return path, state_dict_numpy(tmodel)


@pytest.fixture(scope="module")
def mv2jax_dir(timm_weights, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mv2jax") / "ckpt"
    assert run("--model", NAME, "--checkpoint", timm_weights[0], "--output", path) == 0
    return path


def assert_state_dicts_equal(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(ref)
    for k, v in ref.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("convert_weights.py: error: ") and "Traceback" not in err, err
    return err


# --- conversion ----------------------------------------------------------------------------------------------------


def test_import_writes_mv2jax_layout_and_meta_naming_the_source(timm_weights, mv2jax_dir):
    state, meta = read_orbax(mv2jax_dir)
    source = timm_weights[0]
    assert meta["model_name"] == NAME and meta["num_classes"] == 1000 and meta["in_chans"] == 3
    assert meta["source"] == str(source) and meta["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    ref = timm_weights[1]
    kernel = np.asarray(state["model"]["blocks"]["1"]["0"]["conv_dw"]["weight"])
    np.testing.assert_array_equal(kernel, ref["blocks.1.0.conv_dw.weight"].transpose(2, 3, 1, 0))  # OIHW -> HWIO
    np.testing.assert_array_equal(state["model"]["classifier"]["weight"], ref["classifier.weight"].T)


def test_round_trip_timm_to_mv2jax_to_timm_is_exact_and_loads_strictly_in_timm(timm_weights, mv2jax_dir, tmp_path):
    out = tmp_path / "export" / "model.safetensors"
    assert run("--to-timm", "--input", mv2jax_dir, "--output", out) == 0
    assert_state_dicts_equal(load_file(str(out)), timm_weights[1])  # incl. int64 num_batches_tracked
    tmodel = timm.create_model(NAME)
    result = tmodel.load_state_dict(load_torch(str(out)), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sorted(p.name for p in out.parent.iterdir()) == ["config.json", "model.safetensors"]  # no temp files


def test_export_directory_loads_like_a_hub_repo_with_timm_config(mv2jax_dir, tmp_path):
    out = tmp_path / "model.safetensors"
    assert run("--to-timm", "--input", mv2jax_dir, "--output", out) == 0
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True)
    assert_state_dicts_equal(state_dict_numpy(loaded), load_file(str(out)))
    assert loaded.num_classes == 1000
    # the weights are a file's, not timm's published ones: no tag, and the description names where they came from
    assert "tag" not in loaded.pretrained_cfg and str(mv2jax_dir) in loaded.pretrained_cfg["description"]


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("mobilenetv2_100.ra_in1k", {}),
        ("mobilenetv2_035", {"num_classes": 7, "in_chans": 1}),
        ("mobilenetv2_120d.ra_in1k", {"num_classes": 0}),
    ],
)
def test_config_json_is_what_timm_save_for_hf_writes(name, kwargs, tmp_path):
    from timm.models._hub import save_config_for_hf

    path = tmp_path / "config.json"
    save_config_for_hf(timm.create_model(name, **kwargs), path)
    ours = json.dumps(to_timm.timm_hf_config(mv2jax.create_model(name, **kwargs)), indent=2)
    assert json.loads(ours) == json.loads(path.read_text())


def test_config_json_of_a_fine_tune_is_timms_with_its_data_config_and_label_names_and_no_tag(tmp_path):
    """A fine-tuned model's config.json: timm's `save_config_for_hf` given the trained data config and the class
    names, except that the published tag makes way for a description naming the weights' source."""
    from timm.models._hub import save_config_for_hf

    trained = {"input_size": [3, 96, 96], "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"}
    trained |= {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    names = ["cat", "dog", "fish"]
    path = tmp_path / "config.json"
    save_config_for_hf(
        timm.create_model("mobilenetv2_100", num_classes=3), path, {"label_names": names}, data_config=trained
    )
    expected = json.loads(path.read_text())
    del expected["pretrained_cfg"]["tag"]
    expected["pretrained_cfg"]["description"] = "mobilenetv2_100 weights from RUN, not timm's published weights"
    meta = ModelMeta("mobilenetv2_100", "mobilenetv2_100", 3, "RUN", class_names=tuple(names), data_config=trained)
    ours = json.dumps(to_timm.timm_hf_config(mv2jax.create_model("mobilenetv2_100", num_classes=3), meta), indent=2)
    assert json.loads(ours) == expected


def test_ema_flag_exports_the_ema_weights_of_a_training_checkpoint(timm_weights, tmp_path):
    weights = {"model": timm_weights[1], "ema": state_dict_numpy(timm_model(NAME, seed=2))}
    tree = {
        k: nnx.to_pure_dict(nnx.state(from_timm.build_model(NAME, sd), nnx.Any(nnx.Param, nnx.BatchStat)))
        for k, sd in weights.items()
    }
    ckpt, out = tmp_path / "train", tmp_path / "model.safetensors"
    mv2jax.convert.write_orbax_state(ckpt, tree, {"model_name": NAME, "epoch": 3})
    assert run("--to-timm", "--input", ckpt, "--output", out, "--ema") == 0
    assert_state_dicts_equal(load_file(str(out)), weights["ema"])  # the plain export is the round-trip test's


def test_overwrite_replaces_outputs_and_leaves_no_temporary_files(timm_weights, mv2jax_dir, tmp_path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "model.safetensors"
    shutil.copytree(mv2jax_dir, ckpt)
    out.write_bytes(b"an older export")
    assert run("--model", NAME, "--checkpoint", timm_weights[0], "--output", ckpt, "--overwrite") == 0
    assert run("--to-timm", "--input", ckpt, "--output", out, "--overwrite") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "config.json", "model.safetensors"]
    assert_state_dicts_equal(load_file(str(out)), timm_weights[1])


def test_failed_safetensors_write_keeps_the_old_file_whole(mv2jax_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"previous export")

    def crash(self: Path, data: bytes) -> int:
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", crash)
    assert run("--to-timm", "--input", mv2jax_dir, "--output", out, "--overwrite") == 2
    assert "disk full" in one_error_line(capsys)
    assert out.read_bytes() == b"previous export" and [p.name for p in tmp_path.iterdir()] == [out.name]


# --- --verify ------------------------------------------------------------------------------------------------------


def logit_rows(out: str) -> dict[str, list[str]]:
    """The report's logit lines by input name: [name, shape, 'max|diff|', value, 'rel', value, ...]."""
    return {line.split()[0]: line.split() for line in out.splitlines() if " rel " in line}


@pytest.mark.parametrize("direction", ["import", "export"])
def test_verify_passes_on_good_weights_with_fp32_noise_only(direction, timm_weights, mv2jax_dir, tmp_path, capsys):
    if direction == "import":
        argv = ("--model", NAME, "--checkpoint", timm_weights[0], "--output", tmp_path / "c")
    else:
        argv = ("--to-timm", "--input", mv2jax_dir, "--output", tmp_path / "model.safetensors")
    assert run(*argv, "--verify") == 0
    out = capsys.readouterr().out
    assert "weights: 314/314 tensors bit-identical" in out and out.rstrip().endswith("verify: PASS")
    rows = logit_rows(out)
    assert list(rows) == ["random", "china.jpg"] and rows["random"][1] == "4x224x224x3"
    for r in rows.values():  # the yardstick rule: within 2x timm float32's own error against timm float64
        rel, timm_rel, bound = (float(r[r.index(k) + 1].rstrip(",)")) for k in ("rel", "fp32", "bound"))
        assert 0 < timm_rel and bound == pytest.approx(2 * timm_rel, rel=1e-3) and rel <= bound, out
    assert [r[r.index("agree") + 1] for r in rows.values()] == ["4/4", "1/1"]


def test_verify_fails_when_one_written_tensor_is_perturbed(timm_weights, tmp_path, monkeypatch, capsys):
    write = from_timm.write_orbax_state

    def write_corrupted(path, state, meta):
        kernel = state["model"]["blocks"][3][0]["conv_pw"]["weight"]
        state["model"]["blocks"][3][0]["conv_pw"]["weight"] = kernel * 1.01
        write(path, state, meta)

    monkeypatch.setattr(from_timm, "write_orbax_state", write_corrupted)
    assert run("--model", NAME, "--checkpoint", timm_weights[0], "--output", tmp_path / "c", "--verify") == 1
    out = capsys.readouterr().out
    assert "differ: blocks.3.0.conv_pw.weight" in out and "verify: FAIL" in out
    rows = logit_rows(out).values()
    assert len(rows) == 2  # the logits see it too, far past the bound
    assert all(float(r[r.index("rel") + 1]) > 10 * float(r[r.index("bound") + 1].rstrip(",)")) for r in rows)


def test_verify_fails_on_a_layout_bug_that_round_trips_exactly(mv2jax_dir, tmp_path, monkeypatch, capsys):
    """Both layout functions swap kernel height and width: timm -> mv2jax -> timm stays bit-identical, so only
    timm's logits can show that the exported file holds transposed kernels."""
    spatially_swapped = lambda key, a: np.ascontiguousarray(a.transpose(3, 2, 1, 0)) if a.ndim == 4 else a.T
    for module in (state_dict, orbax_io):
        monkeypatch.setattr(module, "to_timm_layout", spatially_swapped)
    monkeypatch.setattr(state_dict, "from_timm_layout", spatially_swapped)
    assert run("--to-timm", "--input", mv2jax_dir, "--output", tmp_path / "model.safetensors", "--verify") == 1
    out = capsys.readouterr().out
    assert "weights: 314/314 tensors bit-identical" in out and "verify: FAIL" in out


def test_top5_check_fails_on_a_real_swap_and_tolerates_a_tie_within_the_tolerance():
    ref = np.array([[9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 0.0]])
    swapped_4_5 = ref.copy()
    swapped_4_5[0, [4, 5]] = [4.0, 5.0]  # ranks 5 and 6 exchanged: a different top-5 set
    assert top_k_agreement(swapped_4_5, ref, k=5, tie=0.5) == (0, 0)
    tie = np.array([[9.0, 8.0, 7.0, 6.0, 5.0, 5.0 - 1e-6, 0.0]])  # timm's ranks 5 and 6 tied to 1e-6
    noisy = tie.copy()
    noisy[0, 5] += 2e-6  # float noise reorders the tie
    assert top_k_agreement(noisy, tie, k=5, tie=1e-5) == (1, 0)
    assert top_k_agreement(noisy, tie, k=5, tie=1e-7) == (0, 0)


def test_verify_without_timm_says_what_to_install(timm_weights, tmp_path, monkeypatch, capsys):
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: None if name == "torch" else real(name))
    assert run("--model", NAME, "--checkpoint", timm_weights[0], "--output", tmp_path / "c", "--verify") == 2
    assert "pip install 'mv2jax[test]'" in one_error_line(capsys)
    assert not (tmp_path / "c").exists()  # checked before converting anything


# --- bad inputs: one line on stderr, exit code 2 ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    (root / "text.safetensors").write_bytes(b"this is not a checkpoint\x00\x01")
    whole = root / "whole.safetensors"
    save_file(timm.create_model(NAME).state_dict(), str(whole))
    (root / "truncated.safetensors").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # interrupted copy
    (root / "notes.txt").write_text("hello")
    (root / "empty_dir").mkdir()
    torch.manual_seed(0)
    save_file(timm.create_model("mobilenetv2_050").state_dict(), str(root / "050.safetensors"))
    return {p.name: p for p in root.iterdir()}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "mobilenetv3_large_100", "--checkpoint", "{timm}"], "unknown model 'mobilenetv3_large_100'"),
        (["--model", NAME, "--checkpoint", "{bad}/missing.safetensors"], "missing.safetensors does not exist"),
        (["--model", NAME, "--checkpoint", "{bad}/text.safetensors"], "is not a readable safetensors file"),
        (["--model", NAME, "--checkpoint", "{bad}/truncated.safetensors"], "is not a readable safetensors file"),
        (["--model", NAME, "--checkpoint", "{bad}/notes.txt"], "expected .safetensors, .pth"),
        (["--model", NAME, "--checkpoint", "{bad}/050.safetensors"], "checkpoint does not fit mobilenetv2_035:"),
        (["--model", NAME], "mobilenetv2_035.untrained has no pretrained weights on the Hub: pass --checkpoint"),
        (["--model", "mobilenetv2_100.ra_in1k"], "could not get model.safetensors of Hub repo timm/mobilenetv2_100"),
        (["--to-timm", "--input", "{bad}/empty_dir"], "is not an mv2jax (orbax) checkpoint directory"),
        (["--to-timm", "--input", "{mv2jax}", "--ema"], "has no 'ema' weights (it has model)"),
        (["--to-timm", "--input", "{bad}/050.safetensors"], "is a file, which does not name its model: pass --model"),
        (["--to-timm", "--input", "{mv2jax}", "--model", "mobilenetv2_050"], "checkpoint does not fit mobilenetv2_050"),
        (
            ["--model", NAME, "--checkpoint", "{timm}", "--verify", "--image", "{bad}/no.jpg"],
            "image {bad}/no.jpg does not exist",
        ),
    ],
)
def test_bad_input_is_one_line_on_stderr_with_exit_code_2(
    args, message, timm_weights, mv2jax_dir, bad_files, tmp_path, monkeypatch, capsys
):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as on a machine without the Hub
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    paths = {"timm": timm_weights[0], "bad": next(iter(bad_files.values())).parent, "mv2jax": mv2jax_dir}
    output = tmp_path / ("out.safetensors" if "--to-timm" in args else "out")
    assert run(*(a.format(**paths) for a in args), "--output", output) == 2
    assert message.format(**paths) in one_error_line(capsys)
    assert not output.exists()


def test_existing_output_is_refused_without_overwrite(timm_weights, mv2jax_dir, capsys):
    assert run("--model", NAME, "--checkpoint", timm_weights[0], "--output", mv2jax_dir) == 2
    assert "exists: pass --overwrite" in one_error_line(capsys)


def test_command_line_exports_and_reports_bad_input_in_one_line(mv2jax_dir, tmp_path):
    """`python convert_weights.py` itself: a conversion, then a missing file (exit 2, one line, no traceback)."""
    out = tmp_path / "model.safetensors"
    script = [sys.executable, "convert_weights.py", "--to-timm", "--input", str(mv2jax_dir), "--output", str(out)]
    proc = subprocess.run(script, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout == f"wrote {out}\n", proc.stderr
    timm.create_model(NAME).load_state_dict(load_torch(str(out)), strict=True)
    script[4] = str(tmp_path / "nothing")
    proc = subprocess.run(script + ["--overwrite"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"convert_weights.py: error: checkpoint {tmp_path}/nothing does not exist"]


def test_a_truncated_safetensors_file_is_one_clear_error_in_the_reader_and_create_model(bad_files):
    path = bad_files["truncated.safetensors"]
    for load in (read_checkpoint, lambda p: mv2jax.create_model(NAME, checkpoint_path=p)):
        with pytest.raises(ValueError, match="is not a readable safetensors file") as err:
            load(path)
        assert str(path) in str(err.value) and "re-download" in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_flag_is_one_line_and_exit_code_2():
    script = [sys.executable, "convert_weights.py", "--output", "x", "--no-such-flag"]
    proc = subprocess.run(script, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and proc.stdout == ""
    expected = "convert_weights.py: error: unrecognized arguments: --no-such-flag (see --help)"
    assert proc.stderr.splitlines() == [expected]
