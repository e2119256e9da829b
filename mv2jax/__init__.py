"""mv2jax: timm's MobileNetV2 family in JAX / Flax NNX."""

from mv2jax.models import create_model, list_models

__all__ = ["create_model", "list_models"]
__version__ = "0.1.0"
