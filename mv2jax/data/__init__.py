"""Data: timm-identical transforms (numpy + Pillow), RandAugment, RandomErasing.

Exports are `name as name` imports (explicit re-exports), one per line, so modules can append theirs.
"""

from mv2jax.data.config import DEFAULT_CROP_MODE as DEFAULT_CROP_MODE
from mv2jax.data.config import DEFAULT_CROP_PCT as DEFAULT_CROP_PCT
from mv2jax.data.config import IMAGENET_DEFAULT_MEAN as IMAGENET_DEFAULT_MEAN
from mv2jax.data.config import IMAGENET_DEFAULT_STD as IMAGENET_DEFAULT_STD
from mv2jax.data.config import IMAGENET_INCEPTION_MEAN as IMAGENET_INCEPTION_MEAN
from mv2jax.data.config import IMAGENET_INCEPTION_STD as IMAGENET_INCEPTION_STD
from mv2jax.data.config import resolve_data_config as resolve_data_config
from mv2jax.data.randaugment import RandAugment as RandAugment
from mv2jax.data.randaugment import rand_augment_transform as rand_augment_transform
from mv2jax.data.random_erasing import RandomErasing as RandomErasing
from mv2jax.data.transforms import EvalTransform as EvalTransform
from mv2jax.data.transforms import TrainTransform as TrainTransform
from mv2jax.data.transforms import create_transform as create_transform
