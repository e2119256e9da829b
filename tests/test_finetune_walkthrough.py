"""The README's fine-tune walkthrough, run as written: ImageFolder -> train.py from a weights file -> validate ->
export --verify -> predict with the folder names. The block is read from the README, so the README cannot drift
from what runs; only the sizes shrink (a tiny model, 32 px, a few images, one short epoch), and the weights file
is written by timm here instead of downloaded (no network in tests)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- tests/test_finetune_walkthrough.py runs this block"
CLASSES = ("daisy", "rose", "tulip")
# README value -> the test's: sizes only; every flag and the order of the commands stay the README's.
SHRINK = {
    "mobilenetv2_100": "mobilenetv2_035",
    "--img-size 224": "--img-size 32",
    "-b 32": "-b 12",
    "--epochs 10": "--epochs 2",
}


def readme_commands() -> list[list[str]]:
    """The shell commands of the README's walkthrough block, continuation lines joined and comments dropped."""
    text = (REPO / "README.md").read_text()
    block = text[text.index(MARKER) :].split("```bash\n", 1)[1].split("```", 1)[0]
    joined = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def shrink(argv: list[str]) -> list[str]:
    line = " ".join(argv)
    for old, new in SHRINK.items():
        line = line.replace(old, new)
    return line.split()


def make_folder(root: Path) -> None:
    """flowers/{train,validation}/<class>/<i>.jpg: a colour per class, so the run has something to learn."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("validation", 2)):
        for c, name in enumerate(CLASSES):
            folder = root / "flowers" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 60, (40, 40, 3)) + np.eye(3, dtype=np.int64)[c] * 180
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.jpg")


def write_timm_weights(path: Path) -> None:
    """What `hf download` would leave: timm's safetensors of the model (here an untrained tiny variant)."""
    import timm
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True)
    model = timm.create_model(SHRINK["mobilenetv2_100"], pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    assert argv[0] == "python", argv
    args = [sys.executable, *argv[1:]]
    if args[1] == "train.py":
        args[1] = str(REPO / "train.py")
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.timm
def test_the_readme_finetune_walkthrough_runs_and_predict_names_the_folders(tmp_path):
    commands = readme_commands()
    assert [c[:2] for c in commands] == [
        ["hf", "download"],
        ["python", "train.py"],
        ["python", "-m"],
        ["python", "-m"],
        ["python", "-m"],
    ], commands
    assert [c[2] for c in commands[2:]] == ["mv2jax.validate", "mv2jax.export", "mv2jax.predict"]
    make_folder(tmp_path)
    download = commands[0]
    write_timm_weights(tmp_path / download[download.index("--local-dir") + 1] / download[3])

    outputs = {}
    for argv in commands[1:]:
        done = run(shrink(argv), tmp_path)
        name = argv[1] if argv[1] == "train.py" else argv[2]
        assert done.returncode == 0, f"{name} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        outputs[name] = done

    train_log = outputs["train.py"].stdout
    assert "tensors loaded; re-initialised: classifier.weight, classifier.bias" in train_log, train_log[-3000:]
    result = json.loads(outputs["mv2jax.validate"].stdout.split("--result", 1)[1])
    assert result["count"] == 2 * len(CLASSES) and result["img_size"] == 32, result
    sidecar = json.loads((tmp_path / "flowers.onnx.json").read_text())
    assert sidecar["class_names"] == list(CLASSES) and list(sidecar["input_size"]) == [3, 32, 32], sidecar
    predicted = outputs["mv2jax.predict"].stdout
    for name in CLASSES:  # top-5 of 3 classes lists every class, by its folder name
        assert re.search(rf"%\s+{name} \(\d\)", predicted), predicted
