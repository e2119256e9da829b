"""Deterministic, per-process sharded, resumable batch loader on grain.

The stream of global batches is a pure function of (dataset length, global batch size, seed, epoch): epoch `e`
visits a permutation of the examples (grain's `index_shuffle`, seeded by `(seed, e)`), global batch `s` of an
epoch is positions `[s*G, (s+1)*G)` of it, and process `p` of `P` loads positions `[s*G + p*G/P, s*G +
(p+1)*G/P)`. The train transform's randomness comes from `np.random.default_rng((seed, epoch, position))`.
So batches do not depend on the worker count, the process count only splits each global batch, and the
iterator state is just the next step number: resuming replays exactly what an uninterrupted run would see.

Eval (`is_training=False`) visits every example exactly once: the last global batch is padded with
`mask=False` examples, and every process runs the same number of steps.

An unreadable training image is replaced by the next one (timm's rule). Worker processes read ahead and may read
one file many times, so they only report what they replaced, with the batch; the iterator warns once per file and
logs a count per epoch.

Batches from worker processes arrive in shared memory: the iterator unlinks each block as it hands the batch out
(the mapping stays valid until the array is freed), so nothing outlives the process, whoever keeps the arrays; a
Ctrl-C waits until the blocks in hand are unlinked.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
from collections.abc import Callable, Mapping
from typing import Any

import grain
import jax
import numpy as np
from absl import flags as absl_flags
from grain.experimental import index_shuffle
from grain.multiprocessing import SharedMemoryArray
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mv2jax.data.datasets import ImageSource, decode_image
from mv2jax.mesh import DATA_AXIS
from mv2jax.signals import sigint_deferred

logger = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]
EvalTransform = Callable[[Any], np.ndarray]
TrainTransform = Callable[[Any, np.random.Generator], np.ndarray]
# What a corrupt/unreadable image raises while being read or decoded (PIL uses all four).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)
MAX_DECODE_RETRIES = 10  # timm's TIMM_DATASET_MAX_RETRIES default
# Separators of the per-example report of replaced images: entries are "where<TAB>error", joined by newlines.
_FIELD, _ENTRY = "\t", "\n"


class UnreadableImageError(OSError):
    """An eval image could not be read or decoded; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where one per-process batch entry comes from: `index` into the source, `is_real` False for padding."""

    epoch: int
    position: int
    index: int
    is_real: bool


@dataclasses.dataclass(frozen=True)
class StreamPlan:
    """The deterministic map from (step, slot in the per-process batch) to a source example."""

    num_examples: int
    global_batch_size: int
    shard_index: int = 0
    shard_count: int = 1
    shuffle: bool = False
    drop_remainder: bool = False
    seed: int = 0
    num_epochs: int | None = 1  # None: repeat forever

    def __post_init__(self):
        if self.global_batch_size % self.shard_count:
            raise ValueError(
                f"global batch size {self.global_batch_size} must be divisible by the process count {self.shard_count}"
            )
        if not 0 <= self.shard_index < self.shard_count:
            raise ValueError(f"shard_index {self.shard_index} not in [0, {self.shard_count})")
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{self.num_examples} examples make no full global batch of {self.global_batch_size}; "
                "lower --batch-size or keep the last partial batch"
            )

    @property
    def local_batch_size(self) -> int:
        return self.global_batch_size // self.shard_count

    @property
    def steps_per_epoch(self) -> int:
        if self.drop_remainder:
            return self.num_examples // self.global_batch_size
        return math.ceil(self.num_examples / self.global_batch_size)

    @property
    def num_steps(self) -> int:
        """Steps in the whole stream (effectively unbounded when `num_epochs` is None)."""
        if self.num_epochs is None:
            return sys.maxsize // (2 * self.local_batch_size)
        return self.num_epochs * self.steps_per_epoch

    def slot(self, k: int) -> Slot:
        """Entry `k` of this process's flattened stream (`k = step * local_batch_size + j`)."""
        step, j = divmod(k, self.local_batch_size)
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
        position = step_in_epoch * self.global_batch_size + self.shard_index * self.local_batch_size + j
        index = position % self.num_examples
        if self.shuffle:
            epoch_seed = int(np.random.SeedSequence((self.seed, epoch)).generate_state(1)[0])
            index = index_shuffle(index, max_index=self.num_examples - 1, seed=epoch_seed, rounds=4)
        return Slot(epoch, position, index, position < self.num_examples)


class PlannedExamples(grain.MapDataset):
    """Per-process stream of transformed examples: `{'image': f32 [H,W,C] (uint8 if the transform returns uint8),
    'label': i32, 'mask': bool, 'skipped': i32, 'skipped_files': str}` (`skipped`: unreadable training images
    replaced for it; `skipped_files`: which, and why, one "where<TAB>error" line each)."""

    def __init__(self, plan: StreamPlan, source: ImageSource, transform: Callable, is_training: bool):
        super().__init__([])
        self.plan, self.source, self.transform, self.is_training = plan, source, transform, is_training

    def __len__(self) -> int:
        return self.plan.num_steps * self.plan.local_batch_size

    def __str__(self) -> str:
        return f"PlannedExamples({type(self.source).__name__}, {self.plan})"

    def __getitem__(self, k):
        if isinstance(k, slice):
            return self.slice(k)
        slot = self.plan.slot(k)
        image, label, skipped = self._read(slot.index)
        if self.is_training:
            image = self.transform(image, np.random.default_rng((self.plan.seed, slot.epoch, slot.position)))
        else:
            image = self.transform(image)
        image = np.asarray(image)
        if image.dtype != np.uint8:  # uint8 stays: a transform that leaves normalising to the device
            image = image.astype(np.float32, copy=False)
        return {
            "image": image,
            "label": np.int32(label),
            "mask": np.bool_(slot.is_real),
            "skipped": np.int32(len(skipped)),
            "skipped_files": np.str_(_ENTRY.join(skipped)),
        }

    def _read(self, index: int) -> tuple[Any, int, list[str]]:
        """Decode example `index`; in training an unreadable one is replaced by the next (timm's rule). Returns
        the image, its label and a "where<TAB>error" line per replaced image (reported, not logged, here: this
        runs in worker processes, which read ahead)."""
        skipped = []
        for _ in range(MAX_DECODE_RETRIES):
            try:
                raw, label = self.source[index]
                return decode_image(raw), label, skipped
            except DECODE_ERRORS as e:
                where = self.source.describe(index)
                if not self.is_training:
                    raise UnreadableImageError(f"unreadable image {where}: {e}") from e
                skipped.append(f"{where}{_FIELD}{' '.join(str(e).split())}")
                index = (index + 1) % len(self.source)
        raise UnreadableImageError(
            f"{MAX_DECODE_RETRIES} consecutive unreadable images, the last {self.source.describe(index)}"
        )


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """Parallelism: `num_workers` processes (0: in-process), each with `num_threads` reader threads and a
    buffer of `prefetch` batches."""

    num_workers: int = 0
    num_threads: int = 1
    prefetch: int = 2


class Loader:
    """An iterable of per-process batches (see module docstring); `len(loader)` is steps per epoch."""

    def __init__(self, examples: PlannedExamples, workers: WorkerConfig):
        self.plan = examples.plan
        self.workers = workers
        self._batches = examples.batch(self.plan.local_batch_size, drop_remainder=True)

    def __len__(self) -> int:
        return self.plan.steps_per_epoch

    @property
    def num_steps(self) -> int:
        return self.plan.num_steps

    def __iter__(self) -> LoaderIterator:
        return LoaderIterator(self)

    def grain_iterator(self, start_step: int) -> grain.DatasetIterator:
        """A grain iterator over batches `start_step, start_step + 1, ...`."""
        w = self.workers
        ds = self._batches.slice(slice(start_step, None))
        ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=w.num_threads, prefetch_buffer_size=w.prefetch))
        if w.num_workers > 0:
            _allow_unparsed_absl_flags()
            ds = ds.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=w.num_workers, per_worker_buffer_size=w.prefetch)
            )
        return iter(ds)


def _allow_unparsed_absl_flags() -> None:
    """grain 0.2.18 reads an absl flag when starting workers, which fails unless absl parsed the command line
    (google/grain#1355, fixed upstream): let a plain Python program use the flags' defaults."""
    if not absl_flags.FLAGS.is_parsed():
        absl_flags.FLAGS.mark_as_parsed()


class LoaderIterator(grain.DatasetIterator):
    """Yields `{'image': f32 [B,H,W,C] (NHWC), 'label': i32 [B], 'mask': bool [B]}`, B = per-process batch
    (`mask` is False for eval padding; `image` is uint8 if the transform returns uint8).

    `num_skipped` counts unreadable training images replaced so far; each file is warned about once per
    iterator (the first time it is met) and each epoch with replacements ends with a count. `get_state()` is a small
    JSON-able dict, the same on every process; `set_state()` resumes at exactly the next batch. A grain
    `DatasetIterator`, so `grain.checkpoint.CheckpointSave/CheckpointRestore` store it beside an orbax checkpoint.
    """

    def __init__(self, loader: Loader, step: int = 0, num_skipped: int = 0):
        super().__init__()
        self.loader, self.step, self.num_skipped = loader, step, num_skipped
        self._it: grain.DatasetIterator | None = None
        self._warned: set[str] = set()  # files already named in a warning
        self._epoch_skipped = 0  # replaced in the current epoch, since this iterator started

    @property
    def epoch(self) -> int:
        return self.step // self.loader.plan.steps_per_epoch

    def __next__(self) -> Batch:
        if self.step >= self.loader.num_steps:
            raise StopIteration
        self.start_prefetch()
        with sigint_deferred():  # a block taken from the worker's queue but not yet unlinked would outlive the run
            batch = dict(next(self._it))
            for value in batch.values():
                _unlink_shared_memory(value)
        skipped = int(batch.pop("skipped").sum())
        reports = batch.pop("skipped_files")
        if skipped:
            self._report_skipped(skipped, reports)
        self.step += 1
        if self._epoch_skipped and self.step % self.loader.plan.steps_per_epoch == 0:
            logger.warning(
                "epoch %d: replaced %d unreadable training image(s) (%d so far in this run)",
                self.epoch - 1,
                self._epoch_skipped,
                self.num_skipped,
            )
            self._epoch_skipped = 0
        return batch

    def _report_skipped(self, count: int, reports: np.ndarray) -> None:
        self.num_skipped += count
        self._epoch_skipped += count
        for line in _ENTRY.join(str(r) for r in reports.ravel() if r).split(_ENTRY):
            where, _, error = line.partition(_FIELD)
            if where not in self._warned:
                self._warned.add(where)
                logger.warning(
                    "skipped unreadable image %s: %s (replaced by the next image; named once, counted per epoch)",
                    where,
                    error,
                )

    def get_state(self) -> dict[str, int]:
        plan = self.loader.plan
        return {
            "step": self.step,
            "num_skipped": self.num_skipped,
            "seed": plan.seed,
            "global_batch_size": plan.global_batch_size,
            "num_examples": plan.num_examples,
        }

    def set_state(self, state: Mapping[str, int]) -> None:
        plan = self.loader.plan
        expected = {"seed": plan.seed, "global_batch_size": plan.global_batch_size, "num_examples": plan.num_examples}
        saved = {k: state[k] for k in expected}
        if saved != expected:
            raise ValueError(
                f"loader state was saved for {saved}, this loader has {expected}; resume with the "
                "same dataset, --batch-size and --seed"
            )
        self.close()
        self.step, self.num_skipped = int(state["step"]), int(state["num_skipped"])
        self._epoch_skipped = 0

    def start_prefetch(self) -> None:
        """Start reading (and worker processes) now, e.g. while the model is restored."""
        if self._it is None:
            self._it = self.loader.grain_iterator(self.step)
            self._it.start_prefetch()

    def close(self) -> None:
        """Stop worker processes (also done on garbage collection); iterating again restarts them."""
        if self._it is not None:
            with sigint_deferred():  # stopped halfway, it would leave the blocks still queued behind
                self._it.close()
            self._it = None


def _unlink_shared_memory(value: Any) -> None:
    """Remove the name of a worker's shared-memory block now, as the last user (grain would only do it when the
    array is garbage collected, and arrays alive at exit leak: the resource tracker warns). The array stays
    valid: the memory is freed with its last mapping."""
    if isinstance(value, SharedMemoryArray) and getattr(value, "_unlink_on_del", False):
        value.shm.unlink()
        value._unlink_on_del = False


def create_loader(
    dataset: ImageSource,
    transform: EvalTransform | TrainTransform,
    *,
    batch_size: int,
    is_training: bool,
    seed: int = 0,
    num_workers: int = 0,
    shard_index: int | None = None,
    shard_count: int | None = None,
    drop_remainder: bool | None = None,
    num_epochs: int | None = None,
    shuffle: bool | None = None,
    num_threads: int = 1,
    prefetch: int = 2,
) -> Loader:
    """Batches of `dataset` for this process (`batch_size` is global; each process gets `batch_size / count`).

    Training: shuffled per epoch, last partial batch dropped, `num_epochs=None` repeats forever, and
    `transform(img, rng)` gets a per-example generator. Eval: one pass, padded with `mask=False`, `transform(img)`.
    `shard_index`/`shard_count` default to `jax.process_index()`/`jax.process_count()`.
    """
    plan = StreamPlan(
        num_examples=len(dataset),
        global_batch_size=batch_size,
        shard_index=jax.process_index() if shard_index is None else shard_index,
        shard_count=jax.process_count() if shard_count is None else shard_count,
        shuffle=is_training if shuffle is None else shuffle,
        drop_remainder=is_training if drop_remainder is None else drop_remainder,
        seed=seed,
        num_epochs=num_epochs if is_training else 1,
    )
    examples = PlannedExamples(plan, dataset, transform, is_training)
    return Loader(examples, WorkerConfig(num_workers=num_workers, num_threads=num_threads, prefetch=prefetch))


def to_global_batch(
    local_batch: Mapping[str, np.ndarray], mesh: Mesh, sharding: NamedSharding | None = None
) -> dict[str, jax.Array]:
    """Assemble every process's local batch into global device arrays (leading axis = global batch).

    `sharding` defaults to the batch axis split over the mesh's `data` axis (all axes if it has none).
    """
    if sharding is None:
        axes = (DATA_AXIS,) if DATA_AXIS in mesh.axis_names else tuple(mesh.axis_names)
        sharding = NamedSharding(mesh, PartitionSpec(axes))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
