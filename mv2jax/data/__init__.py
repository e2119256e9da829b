"""Data: timm-identical transforms (numpy + Pillow), RandAugment, RandomErasing.

Exports are `name as name` imports (explicit re-exports), one per line, so modules can append theirs.
"""

from mv2jax.constants import DEFAULT_CROP_MODE as DEFAULT_CROP_MODE
from mv2jax.constants import DEFAULT_CROP_PCT as DEFAULT_CROP_PCT
from mv2jax.constants import IMAGENET_DEFAULT_MEAN as IMAGENET_DEFAULT_MEAN
from mv2jax.constants import IMAGENET_DEFAULT_STD as IMAGENET_DEFAULT_STD
from mv2jax.constants import IMAGENET_INCEPTION_MEAN as IMAGENET_INCEPTION_MEAN
from mv2jax.constants import IMAGENET_INCEPTION_STD as IMAGENET_INCEPTION_STD
from mv2jax.data.config import resolve_data_config as resolve_data_config
from mv2jax.data.config import with_trained_config as with_trained_config
from mv2jax.data.datasets import Digits as Digits
from mv2jax.data.datasets import ImageFolder as ImageFolder
from mv2jax.data.datasets import TfdsSource as TfdsSource
from mv2jax.data.datasets import create_dataset as create_dataset
from mv2jax.data.datasets import decode_image as decode_image
from mv2jax.data.datasets import load_image as load_image
from mv2jax.data.loader import UnreadableImageError as UnreadableImageError
from mv2jax.data.loader import create_loader as create_loader
from mv2jax.data.loader import to_global_batch as to_global_batch
from mv2jax.data.mixup import MixupConfig as MixupConfig
from mv2jax.data.mixup import mixup as mixup
from mv2jax.data.mixup import mixup_target as mixup_target
from mv2jax.data.randaugment import RandAugment as RandAugment
from mv2jax.data.randaugment import rand_augment_transform as rand_augment_transform
from mv2jax.data.random_erasing import RandomErasing as RandomErasing
from mv2jax.data.transforms import EvalTransform as EvalTransform
from mv2jax.data.transforms import TrainTransform as TrainTransform
from mv2jax.data.transforms import create_eval_transform as create_eval_transform
from mv2jax.data.transforms import create_transform as create_transform
