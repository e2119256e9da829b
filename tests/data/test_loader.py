"""The grain loader: determinism (seed, worker count), per-process sharding, exact resume, exact eval counts
(1 and 2 simulated processes, and an 8-device CPU mesh), and unreadable images (skipped in training, named in
eval). Transforms here are tiny stand-ins with the real signatures: eval `f(img)`, train `f(img, rng)`.

Kept free of torch/timm imports: grain's worker processes import this module to unpickle the transforms.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import grain
import numpy as np
import pytest
from etils import epath
from PIL import Image

from mv2jax.data.datasets import create_dataset
from mv2jax.data.loader import StreamPlan, UnreadableImageError, create_loader

REPO_ROOT = Path(__file__).resolve().parents[2]


class IndexedSource:
    """`n` tiny images whose label is their own index, so a batch tells which examples it holds."""

    def __init__(self, n: int):
        self.n, self.num_classes = n, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return np.full((6, 6, 3), i % 251, np.uint8), i

    def describe(self, i: int) -> str:
        return f"indexed[{i}]"


def eval_transform(img: Image.Image) -> np.ndarray:
    return np.asarray(img.resize((4, 4)), np.float32) / 255.0


def train_transform(img: Image.Image, rng: np.random.Generator) -> np.ndarray:
    x = np.asarray(img.resize((4, 4)), np.float32) / 255.0
    x = x[:, ::-1] if rng.random() < 0.5 else x
    return x + rng.normal(size=(1, 1, 3)).astype(np.float32)  # per-example random shift shows the rng in use


def take(loader_or_iter, n: int) -> list[dict]:
    it = iter(loader_or_iter)
    out = [next(it) for _ in range(n)]
    if hasattr(it, "close"):
        it.close()
    return out


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys() == {"image", "label", "mask"}
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def real_labels(batches: list[dict]) -> list[int]:
    return [int(v) for b in batches for v in b["label"][b["mask"]]]


def test_batch_layout_and_dtypes():
    b = take(create_loader(IndexedSource(20), train_transform, batch_size=8, is_training=True, seed=0), 1)[0]
    assert b["image"].shape == (8, 4, 4, 3) and b["image"].dtype == np.float32
    assert b["label"].shape == (8,) and b["label"].dtype == np.int32
    assert b["mask"].shape == (8,) and b["mask"].dtype == np.bool_ and b["mask"].all()


def test_same_seed_gives_same_batches_with_0_and_2_workers():
    ds = create_dataset("digits", split="train")
    kw = dict(batch_size=16, is_training=True, num_epochs=None)
    ref = take(create_loader(ds, train_transform, seed=7, **kw), 4)
    assert_same_batches(ref, take(create_loader(ds, train_transform, seed=7, **kw), 4))
    assert_same_batches(ref, take(create_loader(ds, train_transform, seed=7, num_workers=2, **kw), 4))
    other = take(create_loader(ds, train_transform, seed=8, **kw), 1)[0]
    assert not np.array_equal(other["label"], ref[0]["label"])


def test_training_shuffles_each_epoch_differently_and_visits_each_example_once_per_epoch():
    n, g = 40, 8
    batches = take(create_loader(IndexedSource(n), train_transform, batch_size=g, is_training=True, seed=1), 10)
    epoch0, epoch1 = real_labels(batches[:5]), real_labels(batches[5:])
    assert sorted(epoch0) == sorted(epoch1) == list(range(n))
    assert epoch0 != epoch1 and epoch0 != list(range(n))


def test_two_processes_see_disjoint_shards_that_together_form_the_global_batches():
    n, g = 50, 8  # 6 full global batches per epoch, 2 examples dropped (timm drops the last partial batch)
    kw = dict(batch_size=g, is_training=True, seed=3, num_epochs=1)
    single = list(create_loader(IndexedSource(n), train_transform, shard_index=0, shard_count=1, **kw))
    shards = [
        list(create_loader(IndexedSource(n), train_transform, shard_index=p, shard_count=2, **kw)) for p in range(2)
    ]
    assert len(single) == len(shards[0]) == len(shards[1]) == n // g
    seen = [set(real_labels(s)) for s in shards]
    assert not seen[0] & seen[1]
    assert len(seen[0]) == len(seen[1]) == n // g * g // 2
    for whole, p0, p1 in zip(single, *shards, strict=True):  # process p holds rows [p*B/2, (p+1)*B/2)
        for k in whole:
            np.testing.assert_array_equal(whole[k], np.concatenate([p0[k], p1[k]]))


def test_resume_from_saved_state_mid_epoch_replays_the_uninterrupted_run(tmp_path):
    ds = IndexedSource(45)  # 5 steps per epoch at batch 8: the run below crosses two epoch boundaries
    kw = dict(batch_size=8, is_training=True, seed=11, num_epochs=None)
    uninterrupted = take(create_loader(ds, train_transform, **kw), 12)

    it = iter(create_loader(ds, train_transform, **kw))
    first = [next(it) for _ in range(3)]
    grain.checkpoint.CheckpointHandler().save(epath.Path(tmp_path), item=it)  # what orbax stores beside the model
    it.close()
    assert json.loads((tmp_path / "process_0-of-1.json").read_text())["step"] == 3

    resumed = iter(create_loader(ds, train_transform, num_workers=2, **kw))  # worker count may change
    grain.checkpoint.CheckpointHandler().restore(epath.Path(tmp_path), item=resumed)
    rest = [next(resumed) for _ in range(9)]
    resumed.close()
    assert_same_batches(uninterrupted, first + rest)
    assert resumed.epoch == 2


def test_resume_rejects_a_state_from_a_different_stream():
    it = iter(create_loader(IndexedSource(45), train_transform, batch_size=8, is_training=True, seed=1))
    state = it.get_state() | {"seed": 2}
    with pytest.raises(ValueError, match="same dataset, --batch-size and --seed"):
        it.set_state(state)


@pytest.mark.parametrize("shard_count", [1, 2])
def test_eval_visits_every_example_exactly_once(shard_count):
    n, g = 53, 8  # 53 = 6 * 8 + 5: the last global batch has 3 padded slots
    per_process = [
        list(
            create_loader(
                IndexedSource(n),
                eval_transform,
                batch_size=g,
                is_training=False,
                shard_index=p,
                shard_count=shard_count,
            )
        )
        for p in range(shard_count)
    ]
    assert {len(b) for b in per_process} == {7}  # every process runs the same number of steps
    assert all(b["image"].shape[0] == g // shard_count for batches in per_process for b in batches)
    assert sum(int(b["mask"].sum()) for batches in per_process for b in batches) == n
    assert sorted(label for batches in per_process for label in real_labels(batches)) == list(range(n))


def test_eval_on_digits_counts_every_held_out_example():
    ds = create_dataset("digits", split="validation")
    batches = list(create_loader(ds, eval_transform, batch_size=16, is_training=False))
    assert len(ds) % 16 and sum(int(b["mask"].sum()) for b in batches) == len(ds)
    np.testing.assert_array_equal(np.bincount(real_labels(batches), minlength=10), np.bincount(ds.labels))


_EIGHT_DEVICE_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh
    from mv2jax.data.loader import create_loader, to_global_batch
    from tests.data.test_loader import IndexedSource, eval_transform
    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    total, labels = 0, []
    for local in create_loader(IndexedSource(53), eval_transform, batch_size=16, is_training=False):
        batch = to_global_batch(local, mesh)
        assert batch["image"].shape == (16, 4, 4, 3) and len(batch["mask"].sharding.device_set) == 8
        total += int(jax.jit(jnp.sum)(batch["mask"]))
        labels += np.asarray(batch["label"])[np.asarray(batch["mask"])].tolist()
    print(total, sorted(labels) == list(range(53)))
""")


def test_eval_count_is_exact_on_an_8_device_cpu_mesh():
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    out = subprocess.run(
        [sys.executable, "-c", _EIGHT_DEVICE_SCRIPT],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2:] == ["53", "True"]


@pytest.fixture
def folder_with_corrupt_jpegs(tmp_path) -> tuple[Path, list[str]]:
    """train/{a,b}/ with 4 JPEGs each; one truncated JPEG and one non-image '.jpg'."""
    rng = np.random.default_rng(0)
    for c in "ab":
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (12, 10, 3), np.uint8)).save(tmp_path / "train" / c / f"{i}.jpg")
    truncated, garbage = tmp_path / "train" / "a" / "1.jpg", tmp_path / "train" / "b" / "2.jpg"
    truncated.write_bytes(truncated.read_bytes()[:120])
    garbage.write_bytes(b"this is not a jpeg")
    return tmp_path, [str(truncated), str(garbage)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_training_images_are_replaced_named_once_and_counted_per_epoch(
    folder_with_corrupt_jpegs, caplog, num_workers
):
    """Each bad file is warned about once in the run, however often it is read (3 epochs here; worker processes
    read ahead), and each epoch ends with one count."""
    root, bad = folder_with_corrupt_jpegs
    ds = create_dataset("", str(root), split="train")
    loader = create_loader(
        ds, train_transform, batch_size=4, is_training=True, seed=0, num_epochs=3, num_workers=num_workers
    )
    it = iter(loader)
    with caplog.at_level(logging.WARNING, logger="mv2jax.data.loader"):
        batches = list(it)
    assert len(batches) == 6 and all(b["image"].shape[0] == 4 and b["mask"].all() for b in batches)
    assert all(set(b) == {"image", "label", "mask"} for b in batches)
    assert it.num_skipped == 6 and it.get_state()["num_skipped"] == 6  # 2 bad files, each met once per epoch
    messages = [r.getMessage() for r in caplog.records]
    named = [m for m in messages if m.startswith("skipped unreadable image")]
    assert len(named) == 2 and all(sum(path in m for m in named) == 1 for path in bad), messages
    counts = [m for m in messages if "replaced" in m and m.startswith("epoch")]
    assert counts == [
        f"epoch {e}: replaced 2 unreadable training image(s) ({2 * (e + 1)} so far in this run)" for e in range(3)
    ]
    assert len(messages) == 5, messages


def test_corrupt_eval_image_is_reported_with_its_path(folder_with_corrupt_jpegs):
    root, bad = folder_with_corrupt_jpegs
    ds = create_dataset("", str(root), split="validation")  # no validation/ folder: timm falls back to root
    with pytest.raises(UnreadableImageError, match="unreadable image .*(1|2).jpg") as err:
        list(create_loader(ds, eval_transform, batch_size=4, is_training=False))
    assert any(path in str(err.value) for path in bad)


def test_stream_plan_rejects_a_batch_that_does_not_split_over_processes():
    with pytest.raises(ValueError, match="divisible by the process count"):
        StreamPlan(num_examples=10, global_batch_size=6, shard_count=4)


_WORKER_SCRIPT = textwrap.dedent("""
    from mv2jax.data.loader import create_loader
    from tests.data.test_loader import IndexedSource, eval_transform, train_transform

    if __name__ == "__main__":
        kept = []  # batches alive at exit must not leave shared memory behind either
        kept += list(create_loader(IndexedSource(12), eval_transform, batch_size=4, is_training=False, num_workers=2))
        it = iter(create_loader(IndexedSource(40), train_transform, batch_size=8, is_training=True, num_workers=2))
        kept += [next(it) for _ in range(3)]  # stopped mid-stream, with batches read ahead
        it.close()
        print(len(kept))
""")


def test_worker_processes_leave_no_shared_memory_behind():
    """Batches from worker processes arrive in shared memory; none may be left for the resource tracker to find
    at exit (it warns 'There appear to be N leaked shared_memory objects')."""
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    out = subprocess.run(
        [sys.executable, "-c", _WORKER_SCRIPT], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["6"]
    assert "leaked" not in out.stderr and "resource_tracker" not in out.stderr, out.stderr[-3000:]
