"""`TrainConfig`: timm train.py's flags (names, dest names and defaults) as one frozen dataclass, and its parser.

Every field of `TrainConfig` is a flag: its `dataclasses.field` metadata holds the option strings, help text and
argparse details, so the parser is generated from the dataclass and defaults live in one place. YAML config files
(`-c/--config FILE`) use the dest names as keys; as in timm, file values become defaults and the command line wins.

Three more tables describe timm flags that are not `TrainConfig` fields:
- `JAX_MAPPED`: accepted; meaningless in JAX, or done another way. Setting one prints one line saying what it maps
  to (`--channels-last: mv2jax is always NHWC`).
- `UNSUPPORTED`: accepted by the parser so the error is specific; setting one to anything but timm's default is an
  error naming the flag.
- anything else is an unknown flag: argparse's error.

No dataset given (no --data-dir, DIR or --dataset) is the quick demo run: `QUICK_RUN` (the RA recipe scaled down to
`mobilenetv2_035` on the embedded digits at 32x32, a few minutes on a 2-core CPU) supplies the defaults, and the
flags given change them (`python train.py --epochs 30` is the demo with 30 epochs).

mv2jax deviations from timm's defaults: `--model` defaults to `mobilenetv2_100` (timm's resnet50 is not
implemented); `--num-classes` defaults to the dataset's class count (timm: the model's 1000); `--experiment`
defaults to `<model>-<dataset>-<img size>` without a date, so rerunning a command resumes it (see `output_dir`).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import yaml

from mv2jax.cli import (
    CliParser,
    add_conv_impl_arg,
    check_conv_impl,
    check_data_config_args,
    check_exists,
    one_line,
)
from mv2jax.host_memory import SETTINGS as HOST_ALLOCATOR_SETTINGS

DEFAULT_OUTPUT = "./output/train"
EVAL_METRICS = ("top1", "top5", "loss")
DIST_BN_MODES = ("reduce", "broadcast", "")


class ConfigError(ValueError):
    """A configuration that cannot run (reported as one line, exit code 2)."""


def flag(
    *names: str, default: Any = None, help: str = "", group: str = "Miscellaneous parameters", **argparse_kwargs: Any
) -> Any:
    """A `TrainConfig` field that is also a command-line flag (`names` as argparse option strings)."""
    return dataclasses.field(
        default=default, metadata={"names": names, "help": help, "group": group, "argparse": argparse_kwargs}
    )


_DATA, _MODEL, _DEVICE, _OPT = "Dataset parameters", "Model parameters", "Device parameters", "Optimizer parameters"
OPT_LAYOUTS = ("auto", "packed", "per-param")
_SCHED, _AUG = "Learning rate schedule parameters", "Augmentation and regularization parameters"
_BN, _EMA, _DIST = "Batch norm parameters", "Model exponential moving average parameters", "Multi-host (mv2jax)"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """timm train.py's arguments (same dest names and defaults unless the module docstring says otherwise).

    Sizes are per device as in timm: `batch_size` is the per-device batch (global = batch_size x data-parallel
    devices). Learning rates are per update.
    """

    # Dataset
    data_dir: str | None = flag("--data-dir", group=_DATA, metavar="DIR", help="path to dataset (root dir)")
    dataset: str = flag(
        "--dataset",
        default="",
        group=_DATA,
        metavar="NAME",
        help="'' (ImageFolder under --data-dir), 'tfds/NAME' or 'digits' (embedded demo set)",
    )
    train_split: str = flag("--train-split", default="train", group=_DATA, metavar="NAME")
    val_split: str = flag("--val-split", default="validation", group=_DATA, metavar="NAME")
    # Model
    model: str = flag("--model", default="mobilenetv2_100", group=_MODEL, metavar="MODEL")
    pretrained: bool = flag(
        "--pretrained",
        default=False,
        group=_MODEL,
        action="store_true",
        help="start from pretrained weights, adapted as timm does (the stem to --in-chans; a new classifier for "
        "another class count): timm's Hub weights for --model through huggingface_hub's cache, or --pretrained-path",
    )
    pretrained_path: str | None = flag(
        "--pretrained-path",
        group=_MODEL,
        metavar="PATH",
        help="with --pretrained: PATH as the pretrained weights (a timm file, an mv2jax checkpoint directory or a "
        "train.py step directory), adapted as timm does: the stem to --in-chans and ALWAYS a new classifier, even "
        "for the same class count (timm's num_classes=-1 overlay). A step directory gives its raw weights; for its "
        "EMA, convert first: convert_weights.py --to-timm --input STEP --output ema.safetensors --use-ema. "
        "Without --pretrained it does nothing, as in timm",
    )
    initial_checkpoint: str = flag(
        "--initial-checkpoint",
        default="",
        group=_MODEL,
        metavar="PATH",
        help="load PATH strictly, as timm's load_checkpoint: every tensor must fit, the class count included (a "
        "new classifier: --pretrained --pretrained-path PATH). Same sources as --pretrained-path, a step directory "
        "its raw weights; with --pretrained it replaces all of those weights",
    )
    resume: str = flag(
        "--resume",
        default="",
        group=_MODEL,
        metavar="PATH",
        help="resume from this checkpoint (a step directory, or a run/checkpoints directory: latest)",
    )
    no_resume_opt: bool = flag("--no-resume-opt", default=False, group=_MODEL, action="store_true")
    num_classes: int | None = flag(
        "--num-classes", group=_MODEL, type=int, metavar="N", help="number of classes (default: the dataset's)"
    )
    gp: str | None = flag("--gp", group=_MODEL, metavar="POOL", help="global pool: avg, max, avgmax, catavgmax")
    img_size: int | None = flag("--img-size", group=_MODEL, type=int, metavar="N")
    in_chans: int | None = flag("--in-chans", group=_MODEL, type=int, metavar="N")
    input_size: tuple[int, int, int] | None = flag("--input-size", group=_MODEL, type=int, nargs=3, metavar="N")
    crop_pct: float | None = flag("--crop-pct", group=_MODEL, type=float, metavar="N")
    mean: tuple[float, ...] | None = flag("--mean", group=_MODEL, type=float, nargs="+", metavar="MEAN")
    std: tuple[float, ...] | None = flag("--std", group=_MODEL, type=float, nargs="+", metavar="STD")
    interpolation: str = flag("--interpolation", default="", group=_MODEL, metavar="NAME")
    batch_size: int = flag(
        "-b",
        "--batch-size",
        default=128,
        group=_MODEL,
        type=int,
        metavar="N",
        help="batch size per device (default: 128)",
    )
    validation_batch_size: int | None = flag(
        "-vb", "--validation-batch-size", "--val-batch-size", group=_MODEL, type=int, metavar="N"
    )
    head_init_scale: float | None = flag(
        "--head-init-scale", group=_MODEL, type=float, help="multiply the classifier's initial weight and bias by this"
    )
    head_init_bias: float | None = flag(
        "--head-init-bias", group=_MODEL, type=float, help="initial classifier bias value"
    )
    conv_impl: str = flag("--conv-impl", default="auto", group=_MODEL)  # mv2jax's; built by add_conv_impl_arg
    # Device
    amp: bool = flag(
        "--amp",
        default=False,
        group=_DEVICE,
        action="store_true",
        help="mixed precision: bfloat16 compute, float32 parameters, losses and BN statistics",
    )
    compile_cache: str | None = flag(
        "--compile-cache",
        group=_DEVICE,
        metavar="DIR",
        help="mv2jax: persistent XLA compilation cache (default ~/.cache/mv2jax/xla "
        "or $JAX_COMPILATION_CACHE_DIR; '' turns it off)",
    )
    compile_only: str | None = flag(
        "--compile-only",
        group=_DEVICE,
        metavar="TARGET",
        help="mv2jax: train nothing; compile the train and eval steps for TARGET with XLA (a TPU slice such as "
        "v5e:2x2, v4:2x2x1, v5p:2x2x1, v6e:2x2, multi-host v5e:4x4; a GPU: h100, a100, 8xh100) and print per chip "
        "memory vs capacity, flops and HBM bytes per image, a roofline img/s, kernels and compile time. -b is per "
        'chip; nothing is read (--num-classes stands in for the dataset). Needs pip install "jax[tpu]" or '
        '"jax[cuda12]" at jax\'s version. Exit 3 when a step does not fit, naming the largest batch that does',
    )
    host_allocator: str = flag(
        "--host-allocator",
        default="auto",
        group=_DEVICE,
        choices=HOST_ALLOCATOR_SETTINGS,
        help="mv2jax: restart once with glibc malloc tunables that keep XLA:CPU's per-step buffers mapped "
        "(mv2jax.host_memory; ~1.4x faster CPU train steps, the process keeps its peak heap). auto: on only for "
        "JAX's CPU backend (JAX_PLATFORMS, else no GPU/TPU plugin installed); MV2JAX_HOST_ALLOCATOR=0 is 'off'",
    )
    # Optimizer
    opt: str = flag("--opt", default="sgd", group=_OPT, metavar="OPTIMIZER")
    opt_eps: float | None = flag("--opt-eps", group=_OPT, type=float, metavar="EPSILON")
    opt_betas: tuple[float, ...] | None = flag("--opt-betas", group=_OPT, type=float, nargs="+", metavar="BETA")
    momentum: float = flag("--momentum", default=0.9, group=_OPT, type=float, metavar="M")
    weight_decay: float = flag("--weight-decay", default=2e-5, group=_OPT, type=float)
    clip_grad: float | None = flag("--clip-grad", group=_OPT, type=float, metavar="NORM")
    clip_mode: str = flag("--clip-mode", default="norm", group=_OPT, choices=("norm", "value"))
    opt_layout: str = flag(  # mv2jax's
        "--opt-layout",
        default="auto",
        group=_OPT,
        choices=OPT_LAYOUTS,
        help="optimizer state as one vector per buffer and weight-decay group ('packed': fewer kernels) or shaped as "
        "the parameters ('per-param': fewer HBM bytes on a TPU); 'auto': per-param on a TPU, else packed. A "
        "checkpoint of either layout resumes in the other",
    )
    # Learning-rate schedule
    sched: str = flag("--sched", default="cosine", group=_SCHED, choices=("step", "cosine", "constant"))
    sched_on_updates: bool = flag("--sched-on-updates", default=False, group=_SCHED, action="store_true")
    lr: float | None = flag(
        "--lr", group=_SCHED, type=float, metavar="LR", help="learning rate, overrides --lr-base if set"
    )
    lr_base: float = flag("--lr-base", default=0.1, group=_SCHED, type=float, metavar="LR")
    lr_base_size: int = flag("--lr-base-size", default=256, group=_SCHED, type=int, metavar="DIV")
    lr_base_scale: str = flag("--lr-base-scale", default="", group=_SCHED, choices=("", "linear", "sqrt"))
    warmup_lr: float = flag("--warmup-lr", default=1e-5, group=_SCHED, type=float, metavar="LR")
    min_lr: float = flag("--min-lr", default=0.0, group=_SCHED, type=float, metavar="LR")
    epochs: int = flag("--epochs", default=300, group=_SCHED, type=int, metavar="N")
    start_epoch: int | None = flag("--start-epoch", group=_SCHED, type=int, metavar="N")
    decay_epochs: float = flag("--decay-epochs", default=90.0, group=_SCHED, type=float, metavar="N")
    warmup_epochs: int = flag("--warmup-epochs", default=5, group=_SCHED, type=int, metavar="N")
    warmup_prefix: bool = flag("--warmup-prefix", default=False, group=_SCHED, action="store_true")
    cooldown_epochs: int = flag("--cooldown-epochs", default=0, group=_SCHED, type=int, metavar="N")
    decay_rate: float = flag("--decay-rate", "--dr", default=0.1, group=_SCHED, type=float, metavar="RATE")
    # Augmentation and regularization
    no_aug: bool = flag("--no-aug", default=False, group=_AUG, action="store_true")
    train_crop_mode: str | None = flag("--train-crop-mode", group=_AUG)
    scale: tuple[float, ...] = flag("--scale", default=(0.08, 1.0), group=_AUG, type=float, nargs="+", metavar="PCT")
    ratio: tuple[float, ...] = flag(
        "--ratio", default=(3.0 / 4.0, 4.0 / 3.0), group=_AUG, type=float, nargs="+", metavar="RATIO"
    )
    hflip: float = flag("--hflip", default=0.5, group=_AUG, type=float)
    vflip: float = flag("--vflip", default=0.0, group=_AUG, type=float)
    color_jitter: float = flag("--color-jitter", default=0.4, group=_AUG, type=float, metavar="PCT")
    color_jitter_prob: float | None = flag("--color-jitter-prob", group=_AUG, type=float, metavar="PCT")
    grayscale_prob: float | None = flag("--grayscale-prob", group=_AUG, type=float, metavar="PCT")
    gaussian_blur_prob: float | None = flag("--gaussian-blur-prob", group=_AUG, type=float, metavar="PCT")
    aa: str | None = flag("--aa", group=_AUG, metavar="NAME", help="RandAugment policy, e.g. rand-m9-mstd0.5")
    reprob: float = flag("--reprob", default=0.0, group=_AUG, type=float, metavar="PCT")
    remode: str = flag("--remode", default="pixel", group=_AUG)
    recount: int = flag("--recount", default=1, group=_AUG, type=int)
    resplit: bool = flag(
        "--resplit",
        default=False,
        group=_AUG,
        action="store_true",
        help="no effect without augmentation splits (as in timm)",
    )
    mixup: float = flag("--mixup", default=0.0, group=_AUG, type=float)
    cutmix: float = flag("--cutmix", default=0.0, group=_AUG, type=float)
    cutmix_minmax: tuple[float, ...] | None = flag("--cutmix-minmax", group=_AUG, type=float, nargs="+")
    mixup_prob: float = flag("--mixup-prob", default=1.0, group=_AUG, type=float)
    mixup_switch_prob: float = flag("--mixup-switch-prob", default=0.5, group=_AUG, type=float)
    mixup_mode: str = flag("--mixup-mode", default="batch", group=_AUG, choices=("batch", "pair", "elem"))
    mixup_off_epoch: int = flag("--mixup-off-epoch", default=0, group=_AUG, type=int, metavar="N")
    smoothing: float = flag("--smoothing", default=0.1, group=_AUG, type=float)
    train_interpolation: str = flag("--train-interpolation", default="random", group=_AUG)
    drop: float = flag("--drop", default=0.0, group=_AUG, type=float, metavar="PCT")
    drop_connect: float | None = flag(
        "--drop-connect", group=_AUG, type=float, metavar="PCT", help="deprecated alias of --drop-path"
    )
    drop_path: float | None = flag("--drop-path", group=_AUG, type=float, metavar="PCT")
    # Batch norm
    sync_bn: bool = flag(
        "--sync-bn",
        default=False,
        group=_BN,
        action="store_true",
        help="BatchNorm statistics over the global batch (default: per device, as timm)",
    )
    dist_bn: str = flag(
        "--dist-bn",
        default="reduce",
        group=_BN,
        choices=DIST_BN_MODES,
        help="per-device BatchNorm running statistics: reduce (mean over devices), broadcast "
        "(device 0's), '' (no sync; kept as broadcast, timm's saved statistics)",
    )
    # EMA
    model_ema: bool = flag("--model-ema", default=False, group=_EMA, action="store_true")
    model_ema_decay: float = flag("--model-ema-decay", default=0.9998, group=_EMA, type=float)
    model_ema_warmup: bool = flag("--model-ema-warmup", default=False, group=_EMA, action="store_true")
    # Misc
    seed: int = flag("--seed", default=42, type=int, metavar="S")
    log_interval: int = flag("--log-interval", default=50, type=int, metavar="N")
    checkpoint_hist: int = flag(
        "--checkpoint-hist",
        default=10,
        type=int,
        metavar="N",
        help="number of latest checkpoints to keep (the best is kept as well)",
    )
    workers: int = flag("-j", "--workers", default=4, type=int, metavar="N", help="data loading processes")
    output: str = flag("--output", default="", metavar="PATH", help=f"output root (default: {DEFAULT_OUTPUT})")
    experiment: str = flag("--experiment", default="", metavar="NAME")
    eval_metric: str = flag("--eval-metric", default="top1", choices=EVAL_METRICS)
    steps_per_epoch: int | None = flag(
        "--steps-per-epoch", type=int, metavar="N", help="mv2jax: at most N steps per epoch (smoke runs)"
    )
    # Multi-host (mv2jax; TPU pods and SLURM clusters auto-detect with --num-processes alone)
    coordinator_address: str | None = flag("--coordinator-address", group=_DIST, metavar="HOST:PORT")
    num_processes: int | None = flag("--num-processes", group=_DIST, type=int, metavar="N")
    process_id: int | None = flag("--process-id", group=_DIST, type=int, metavar="I")

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-able dict (tuples as lists), keyed by dest name."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @property
    def drop_path_rate(self) -> float:
        return self.drop_path if self.drop_path is not None else (self.drop_connect or 0.0)

    @property
    def distributed(self) -> bool:
        return bool(self.coordinator_address) or (self.num_processes or 1) > 1

    def output_dir(self, img_size: int) -> Path:
        """`<output>/<experiment>`; the default experiment name is timm's without the date (resumable)."""
        name = self.experiment or "-".join(
            [
                self.model.replace("/", "_").replace(":", "_"),
                (self.dataset or "folder").replace("/", "_"),
                str(img_size),
            ]
        )
        return Path(self.output or DEFAULT_OUTPUT) / name


# --- timm flags that are not TrainConfig fields ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExtraFlag:
    """A timm flag outside `TrainConfig`: `names`, `default` (timm's), argparse kwargs, and `note` (JAX_MAPPED: what
    it maps to; UNSUPPORTED: why it is not available)."""

    names: tuple[str, ...]
    note: str
    default: Any = None
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)


_STORE_TRUE = {"action": "store_true"}
_INT, _FLOAT, _FLOATS = {"type": int}, {"type": float}, {"type": float, "nargs": "+"}

JAX_MAPPED: Mapping[str, ExtraFlag] = {
    "channels_last": ExtraFlag(("--channels-last",), "mv2jax is always NHWC", False, _STORE_TRUE),
    "pin_mem": ExtraFlag(
        ("--pin-mem",), "batches go host->device with jax.make_array_from_process_local_data", False, _STORE_TRUE
    ),
    "no_prefetcher": ExtraFlag(
        ("--no-prefetcher",), "grain prefetches on the host; normalisation is in the transform", False, _STORE_TRUE
    ),
    "torchscript": ExtraFlag(("--torchscript",), "the train and eval steps are jax.jit-compiled", False, _STORE_TRUE),
    "torchcompile": ExtraFlag(
        ("--torchcompile",), "the train and eval steps are jax.jit-compiled", None, {"nargs": "?", "const": "inductor"}
    ),
    "torchcompile_mode": ExtraFlag(("--torchcompile-mode",), "XLA compiles the steps (no modes)"),
    "fuser": ExtraFlag(("--fuser",), "XLA fuses the jitted steps", ""),
    "fast_norm": ExtraFlag(("--fast-norm",), "XLA fuses BatchNorm", False, _STORE_TRUE),
    "grad_checkpointing": ExtraFlag(
        ("--grad-checkpointing",), "not needed at these sizes; XLA plans memory", False, _STORE_TRUE
    ),
    "amp_dtype": ExtraFlag(("--amp-dtype",), "--amp computes in bfloat16 (float16 would need loss scaling)", "float16"),
    "amp_impl": ExtraFlag(("--amp-impl",), "--amp is a bfloat16 compute dtype (no apex/native split)", "native"),
    "model_ema_force_cpu": ExtraFlag(
        ("--model-ema-force-cpu",),
        "the EMA lives beside the parameters on the devices and is always evaluated",
        False,
        _STORE_TRUE,
    ),
    "local_rank": ExtraFlag(
        ("--local_rank", "--local-rank"),
        "multi-host runs use jax.distributed (--coordinator-address, --num-processes, --process-id)",
        0,
        _INT,
    ),
    "device": ExtraFlag(
        ("--device",), "JAX uses every device of its default backend (JAX_PLATFORMS to choose)", "cuda"
    ),
    "device_modules": ExtraFlag(
        ("--device-modules",), "JAX backends are plugins found at import", None, {"nargs": "+"}
    ),
    "no_ddp_bb": ExtraFlag(
        ("--no-ddp-bb",), "no DDP: parameters and BN statistics are replicated arrays", False, _STORE_TRUE
    ),
    "synchronize_step": ExtraFlag(
        ("--synchronize-step",), "each step's finite check already synchronises", False, _STORE_TRUE
    ),
    "use_multi_epochs_loader": ExtraFlag(
        ("--use-multi-epochs-loader",), "the grain loader is one stream over all epochs", False, _STORE_TRUE
    ),
    "worker_seeding": ExtraFlag(
        ("--worker-seeding",),
        "augmentation randomness is seeded per example from (seed, epoch, position), independent of workers",
        "all",
    ),
    "grad_accum_steps": ExtraFlag(("--grad-accum-steps",), "1 is the only value (no gradient accumulation)", 1, _INT),
    "recovery_interval": ExtraFlag(
        ("--recovery-interval",), "SIGTERM or Ctrl-C saves a checkpoint at the next step; epoch ends save one", 0, _INT
    ),
    "dataset_download": ExtraFlag(
        ("--dataset-download",), "mv2jax never downloads datasets (prepare TFDS data first)", False, _STORE_TRUE
    ),
}

UNSUPPORTED: Mapping[str, ExtraFlag] = {
    name: ExtraFlag(names, reason, default, kwargs)
    for name, names, default, kwargs, reason in [
        ("model_kwargs", ("--model-kwargs",), None, {"nargs": "*"}, "MobileNetV2 takes no extra model kwargs"),
        ("opt_kwargs", ("--opt-kwargs",), None, {"nargs": "*"}, "not implemented"),
        ("model_dtype", ("--model-dtype",), None, {}, "use --amp for bfloat16 compute"),
        ("layer_decay", ("--layer-decay",), None, _FLOAT, "not implemented"),
        ("lr_noise", ("--lr-noise",), None, _FLOATS, "not implemented"),
        ("lr_noise_pct", ("--lr-noise-pct",), 0.67, _FLOAT, "not implemented"),
        ("lr_noise_std", ("--lr-noise-std",), 1.0, _FLOAT, "not implemented"),
        ("lr_cycle_mul", ("--lr-cycle-mul",), 1.0, _FLOAT, "one cycle only"),
        ("lr_cycle_decay", ("--lr-cycle-decay",), 0.5, _FLOAT, "one cycle only"),
        ("lr_cycle_limit", ("--lr-cycle-limit",), 1, _INT, "one cycle only"),
        ("lr_k_decay", ("--lr-k-decay",), 1.0, _FLOAT, "not implemented"),
        ("decay_milestones", ("--decay-milestones",), None, {"type": int, "nargs": "+"}, "no multistep schedule"),
        ("patience_epochs", ("--patience-epochs",), 10, _INT, "no plateau schedule"),
        ("epoch_repeats", ("--epoch-repeats",), 0.0, _FLOAT, "not implemented"),
        ("aug_repeats", ("--aug-repeats",), 0.0, _FLOAT, "not implemented"),
        ("aug_splits", ("--aug-splits",), 0, _INT, "not implemented"),
        ("jsd_loss", ("--jsd-loss",), False, _STORE_TRUE, "not implemented"),
        ("bce_loss", ("--bce-loss",), False, _STORE_TRUE, "not implemented"),
        ("bce_sum", ("--bce-sum",), False, _STORE_TRUE, "not implemented"),
        ("bce_target_thresh", ("--bce-target-thresh",), None, _FLOAT, "not implemented"),
        ("bce_pos_weight", ("--bce-pos-weight",), None, _FLOAT, "not implemented"),
        ("drop_block", ("--drop-block",), None, _FLOAT, "MobileNetV2 has no DropBlock"),
        ("bn_momentum", ("--bn-momentum",), None, _FLOAT, "not implemented"),
        ("bn_eps", ("--bn-eps",), None, _FLOAT, "not implemented"),
        ("split_bn", ("--split-bn",), False, _STORE_TRUE, "not implemented"),
        ("class_map", ("--class-map",), "", {}, "not implemented"),
        ("input_img_mode", ("--input-img-mode",), None, {}, "images are read as RGB"),
        ("input_key", ("--input-key",), None, {}, "the dataset's supervised keys are used"),
        ("target_key", ("--target-key",), None, {}, "the dataset's supervised keys are used"),
        ("test_split", ("--test-split",), None, {}, "not implemented"),
        ("train_num_samples", ("--train-num-samples",), None, _INT, "datasets are random-access"),
        ("val_num_samples", ("--val-num-samples",), None, _INT, "datasets are random-access"),
        ("dataset_trust_remote_code", ("--dataset-trust-remote-code",), False, _STORE_TRUE, "no HF datasets"),
        ("tta", ("--tta",), 0, _INT, "not implemented"),
        ("save_images", ("--save-images",), False, _STORE_TRUE, "not implemented"),
        ("log_wandb", ("--log-wandb",), False, _STORE_TRUE, "use the JSON-lines log"),
        ("wandb_project", ("--wandb-project",), None, {}, "use the JSON-lines log"),
        ("wandb_tags", ("--wandb-tags",), [], {"nargs": "+"}, "use the JSON-lines log"),
        ("wandb_resume_id", ("--wandb-resume-id",), "", {}, "use the JSON-lines log"),
    ]
}

# `python train.py` with no arguments: timm's RA recipe for this family (RMSpropTF, step decay after warmup, EMA,
# RandAugment m9, random erasing, label smoothing, dropout, drop path) scaled to 20 short epochs on a 2-core CPU.
# Scaled for the data: a per-update schedule (the 2-epoch warmup is 44 updates, not one jump) with a faster decay;
# lr 0.002, half of timm's linear scaling of 0.048 to batch 64 (0.004 diverges early on this small set; a lower lr
# learns slower and is no steadier); a classifier initialised 10x smaller (timm's init range is 1/sqrt(classes):
# with 10 classes the first logits are ~10x an ImageNet head's); no flips (a flipped digit is another digit); crops
# of 80-100% (the digit fills the frame, so a smaller crop cuts off the strokes that tell digits apart: with 50-100%
# crops the top-1 a run ends at depended on its seed by several points); 20 epochs, by which the EMA's top-1 has
# levelled off.
QUICK_RUN: Mapping[str, Any] = {
    "model": "mobilenetv2_035",
    "dataset": "digits",
    "img_size": 32,
    "batch_size": 64,
    "epochs": 20,
    "sched": "step",
    "sched_on_updates": True,
    "decay_epochs": 1.0,
    "decay_rate": 0.9,
    "warmup_epochs": 2,
    "warmup_lr": 1e-6,
    "opt": "rmsproptf",
    "opt_eps": 0.001,
    "lr": 0.002,
    "weight_decay": 1e-5,
    "drop": 0.1,
    "drop_path": 0.05,
    "head_init_scale": 0.1,
    "model_ema": True,
    "model_ema_decay": 0.998,
    "model_ema_warmup": True,
    "aa": "rand-m9-mstd0.5",
    "remode": "pixel",
    "reprob": 0.2,
    "hflip": 0.0,
    "scale": (0.8, 1.0),
    "workers": 1,
    "log_interval": 11,
    "checkpoint_hist": 2,
}


# --- parsing -----------------------------------------------------------------------------------------------------

_UNSET = object()  # argparse default of JAX_MAPPED flags: tells "given" from "left alone"


EXIT_CODES_HELP = (
    "Exit codes: 0 done, or stopped by SIGTERM after saving a checkpoint; 1 training diverged (non-finite loss; the "
    "last checkpoint is intact); 2 bad configuration; 3 --compile-only: a step does not fit in the target's "
    "memory (the report names the largest batch that fits); 130 Ctrl-C. A first Ctrl-C (or SIGTERM) stops at the next "
    "update (after a compilation, an eval or a checkpoint write in progress) and saves a checkpoint there; a second "
    "Ctrl-C stops at once without saving. Either way, rerun the same command to resume from the last checkpoint."
)


def build_parser() -> argparse.ArgumentParser:
    """The train.py parser: `TrainConfig` fields, then the JAX_MAPPED and UNSUPPORTED timm flags."""
    parser = CliParser(
        "train.py",
        description="Train a timm MobileNetV2 in JAX with timm's train.py flags "
        "(no dataset: a quick demo run on the embedded digits dataset, changed by any flags given).",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument(
        "-c",
        "--config",
        default="",
        metavar="FILE",
        help="YAML file of defaults (keys = dest names); command-line flags win",
    )
    parser.add_argument("data", nargs="?", metavar="DIR", help="path to dataset (deprecated: use --data-dir)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        group = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        if f.name == "conv_impl":  # the flag every CLI shares, checked against the backend registry
            add_conv_impl_arg(group, default=f.default)
            continue
        group.add_argument(
            *meta["names"], dest=f.name, default=f.default, help=meta["help"] or None, **meta["argparse"]
        )
    mapped = parser.add_argument_group("timm flags with no JAX meaning (accepted; each prints its mapping)")
    for dest, extra in JAX_MAPPED.items():
        mapped.add_argument(*extra.names, dest=dest, default=_UNSET, help=extra.note, **extra.kwargs)
    unsupported = parser.add_argument_group("timm flags mv2jax does not implement (an error unless at default)")
    for dest, extra in UNSUPPORTED.items():
        unsupported.add_argument(*extra.names, dest=dest, default=extra.default, help=argparse.SUPPRESS, **extra.kwargs)
    return parser


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {one_line(e)}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of dest names to values")
    return values


def _apply_defaults(parser: argparse.ArgumentParser, values: Mapping[str, Any], source: str) -> None:
    known = {a.dest for a in parser._actions}
    unknown = sorted(set(values) - known - {"config"})
    if unknown:
        raise ConfigError(f"{source}: unknown keys {unknown} (keys are train.py dest names, e.g. batch_size)")
    parser.set_defaults(**{k: v for k, v in values.items() if k != "config"})


def parse_config(argv: Sequence[str] | None = None, out: TextIO | None = None) -> TrainConfig:
    """Command line (default: sys.argv[1:]) -> TrainConfig. Prints one line per JAX_MAPPED flag that is set, to
    `out` (default stdout). Bad values exit through argparse (code 2) with the flag named.

    Without a dataset (no --data-dir, DIR or --dataset, on the command line or in the -c file) this is the quick
    demo run: `QUICK_RUN` gives the defaults, the file and the flags change them, and one line says so."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    parser = build_parser()
    pre = CliParser("train.py", add_help=False)
    pre.add_argument("-c", "--config", default="")
    known, _ = pre.parse_known_args(argv)
    try:
        file_values = _read_yaml(known.config) if known.config else {}
        _apply_defaults(parser, file_values, known.config)
        ns = vars(parser.parse_args(argv))
        demo = not (ns["data"] or ns["data_dir"] or ns["dataset"])
        if demo:
            _apply_defaults(parser, QUICK_RUN, "QUICK_RUN")
            _apply_defaults(parser, file_values, known.config)  # the file's values still win over the demo's
            ns = vars(parser.parse_args(argv))
        config = _to_config(ns)
    except ConfigError as e:
        parser.error(str(e))
    for line in ([_demo_line(argv)] if demo else []) + _mapping_notes(ns):  # once the configuration is valid
        print(line, file=out)
    for line in weights_warnings(config):
        print(f"train.py: warning: {line}", file=sys.stderr, flush=True)
    return config


def weights_warnings(config: TrainConfig) -> list[str]:
    """One line per weights flag that has no effect, as in timm's train.py."""
    if config.pretrained_path and not config.pretrained:
        return [f"--pretrained-path {config.pretrained_path} does nothing without --pretrained (as in timm)"]
    if config.pretrained and config.initial_checkpoint:
        pretrained = f"--pretrained-path {config.pretrained_path}" if config.pretrained_path else "--pretrained"
        return [
            f"--initial-checkpoint is a strict load that replaces every weight of {pretrained} (as in timm): those "
            "are not read"
        ]
    return []


def _demo_line(argv: Sequence[str]) -> str:
    demo = "quick demo run (" + " ".join(_as_flags(QUICK_RUN)) + ")"
    if not argv:
        return f"no arguments: {demo}"
    return f"no dataset given (--data-dir, --dataset): {demo} with {shlex.join(argv)}"


def host_allocator_setting(argv: Sequence[str] | None = None) -> str:
    """`--host-allocator` from the command line (or the `-c` YAML file) alone, before the full parse: train.py
    decides on restarting with it first thing, without JAX. A bad value gives 'off' here (no restart), and the
    full parse then reports it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = CliParser("train.py", add_help=False)
    pre.add_argument("-c", "--config", default="")
    pre.add_argument("--host-allocator", default=None)
    known, _ = pre.parse_known_args(argv)
    value = known.host_allocator
    if value is None and known.config:
        try:
            value = _read_yaml(known.config).get("host_allocator")
        except ConfigError:
            value = None
    value = _on_off(TrainConfig.host_allocator if value is None else value)
    return value if value in HOST_ALLOCATOR_SETTINGS else "off"


def _on_off(value: Any) -> Any:
    """YAML reads `on` / `off` as booleans: back to the setting's words."""
    return {True: "on", False: "off"}[value] if isinstance(value, bool) else value


def _mapping_notes(ns: Mapping[str, Any]) -> list[str]:
    return [f"{extra.names[0]}: {extra.note}" for dest, extra in JAX_MAPPED.items() if ns[dest] is not _UNSET]


def _to_config(ns: dict[str, Any]) -> TrainConfig:
    """Check the parsed values and build the config (ConfigError names the offending flag)."""
    for dest, extra in UNSUPPORTED.items():
        if ns[dest] != extra.default:
            raise ConfigError(f"{extra.names[0]}: {extra.note} in mv2jax")
    accum = ns["grad_accum_steps"]
    if accum is not _UNSET and accum != 1:
        raise ConfigError("--grad-accum-steps: gradient accumulation is not implemented in mv2jax (use 1)")
    if ns["data"]:
        if ns["data_dir"] and ns["data_dir"] != ns["data"]:
            raise ConfigError(f"dataset path given twice: positional {ns['data']!r} and --data-dir {ns['data_dir']!r}")
        ns["data_dir"] = ns["data"]
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in ns.items() if k in fields}
    values["host_allocator"] = _on_off(values["host_allocator"])
    config = TrainConfig(**values)
    check_config(config)
    return config


class Bounds(NamedTuple):
    """The values a numeric flag accepts: `low` <= value <= `high` (None: unbounded); `low_open` excludes `low`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def describe(self) -> str:
        low = f"> {self.low}" if self.low_open else f">= {self.low}"
        if self.high is None:
            return f"must be {low}"
        return f"must be in ({self.low}, {self.high}]" if self.low_open else f"must be in [{self.low}, {self.high}]"

    def admits(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        return above and (self.high is None or value <= self.high)


_PROBABILITY, _POSITIVE, _AT_LEAST_1, _AT_LEAST_0 = Bounds(0, 1), Bounds(0, low_open=True), Bounds(1), Bounds(0)
# The ranges argparse cannot check, by dest; a None value (flag unset) passes.
FLAG_BOUNDS: Mapping[str, Bounds] = {
    **dict.fromkeys(
        ("batch_size", "validation_batch_size", "epochs", "steps_per_epoch", "checkpoint_hist", "log_interval"),
        _AT_LEAST_1,
    ),
    **dict.fromkeys(("num_classes", "in_chans", "lr_base_size", "recount", "num_processes"), _AT_LEAST_1),
    **dict.fromkeys(("workers", "start_epoch", "warmup_epochs", "cooldown_epochs", "mixup_off_epoch"), _AT_LEAST_0),
    **dict.fromkeys(("lr", "lr_base", "warmup_lr", "min_lr", "decay_rate", "momentum", "weight_decay"), _AT_LEAST_0),
    **dict.fromkeys(("opt_eps", "color_jitter", "mixup", "cutmix", "process_id"), _AT_LEAST_0),
    **dict.fromkeys(("decay_epochs", "clip_grad"), _POSITIVE),
    **dict.fromkeys(("hflip", "vflip", "reprob", "smoothing", "drop", "drop_path", "drop_connect"), _PROBABILITY),
    **dict.fromkeys(("mixup_prob", "mixup_switch_prob", "model_ema_decay", "color_jitter_prob"), _PROBABILITY),
    **dict.fromkeys(("grayscale_prob", "gaussian_blur_prob"), _PROBABILITY),
}


def _flag_name(dest: str) -> str:
    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == dest)
    return next(n for n in field.metadata["names"] if n.startswith("--"))


def check_config(config: TrainConfig) -> None:
    """Value checks argparse cannot express (ConfigError, one line). Paths are `check_paths`'."""
    for dest, bounds in FLAG_BOUNDS.items():
        value = getattr(config, dest)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{_flag_name(dest)} must be a number, got {value!r}")
        if not bounds.admits(value):
            raise ConfigError(f"{_flag_name(dest)} {bounds.describe()}, got {value}")
    _check_pair("--scale", config.scale, _POSITIVE)
    _check_pair("--ratio", config.ratio, _POSITIVE)
    try:  # shared with validate: --img-size, --input-size, --crop-pct
        check_data_config_args(config)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if config.host_allocator not in HOST_ALLOCATOR_SETTINGS:
        raise ConfigError(
            f"--host-allocator must be one of {', '.join(HOST_ALLOCATOR_SETTINGS)}, got {config.host_allocator!r}"
        )
    try:  # a value from a YAML file or config_from_dict, which the flag's own check did not see
        check_conv_impl(config.conv_impl)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _check_pair(flag: str, values: Sequence[float], bounds: Bounds) -> None:
    """`values` is (low, high), low <= high, both within `bounds` (timm's --scale and --ratio)."""
    if len(values) != 2 or not all(bounds.admits(v) for v in values) or values[0] > values[1]:
        raise ConfigError(f"{flag} takes two values LOW HIGH with LOW <= HIGH that {bounds.describe()}, got {values}")


def check_paths(config: TrainConfig) -> None:
    """The paths `config` reads exist (FileNotFoundError naming the flag): checked before any work, so a typo
    costs no startup and leaves no run directory."""
    check_exists("--data-dir", config.data_dir)
    check_exists("--initial-checkpoint", config.initial_checkpoint)
    if config.pretrained:  # without --pretrained it is not read (as in timm)
        check_exists("--pretrained-path", config.pretrained_path)
    check_exists("--resume", config.resume)


def _as_flags(values: Mapping[str, Any]) -> list[str]:
    """{'batch_size': 64, 'model_ema': True} -> ['--batch-size', '64', '--model-ema']."""
    names = {
        f.name: next(n for n in f.metadata["names"] if n.startswith("--")) for f in dataclasses.fields(TrainConfig)
    }
    flags: list[str] = []
    for k, v in values.items():
        if v is True:
            flags.append(names[k])
        elif v is not False and v is not None:
            flags += [names[k], *(map(str, v) if isinstance(v, (list, tuple)) else [str(v)])]
    return flags


def config_from_dict(values: Mapping[str, Any]) -> TrainConfig:
    """A TrainConfig from `to_dict()` output (e.g. a checkpoint's saved config); unknown keys are an error."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}")
    return TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
