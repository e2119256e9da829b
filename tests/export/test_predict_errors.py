"""`python -m mv2jax.predict` on a mix of good and unreadable images: one error line names each bad file, the good
images' results are still printed, and the exit code is 1 (2 stays for a bad command line); `--help` documents the
exit codes."""

from __future__ import annotations

from mv2jax import create_model
from mv2jax.convert import mv2jax_to_timm
from mv2jax.convert.verify import photo_path
from mv2jax.predict import build_parser, main


def test_a_truncated_image_is_named_the_good_ones_are_printed_and_the_exit_code_is_1(tmp_path, capsys):
    from safetensors.numpy import save_file

    save_file(mv2jax_to_timm(create_model("mobilenetv2_035")), str(tmp_path / "m.safetensors"))
    photo = photo_path(None).read_bytes()
    good, truncated = tmp_path / "good.jpg", tmp_path / "truncated.jpg"
    good.write_bytes(photo)
    truncated.write_bytes(photo[: len(photo) - 200])
    model = ["--model", "mobilenetv2_035", "--checkpoint", str(tmp_path / "m.safetensors"), "--img-size", "32"]

    code = main([str(truncated), str(good), str(good), *model])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.count("\n") == 1 and err.startswith(f"mv2jax.predict: error: cannot read image {truncated}: "), err
    assert "truncated" in err.split(str(truncated), 1)[1]
    lines = out.splitlines()
    assert len(lines) == 2 * 6 and lines[0] == lines[6] == str(good) and lines[1:6] == lines[7:12]
    assert all(line.startswith(f"  {rank}. ") for rank, line in zip(range(1, 6), lines[1:6], strict=True))

    assert main([str(good), *model]) == 0
    assert capsys.readouterr().out.splitlines() == lines[:6]  # the same result with no bad image beside it
    assert main([str(truncated), *model]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and str(truncated) in err


def test_help_documents_the_exit_codes():
    text = build_parser().format_help()
    section = text.split("exit codes:", 1)[1].splitlines()
    codes = [line.split()[0] for line in section if line.strip()]
    assert codes == ["0", "1", "2", "130"], text
