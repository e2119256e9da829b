"""The MobileNetV2 family: architecture, layers, network, registry and factory."""

from mv2jax.models.factory import create_model
from mv2jax.models.mobilenetv2 import MobileNetV2
from mv2jax.models.registry import list_models

__all__ = ["MobileNetV2", "create_model", "list_models"]
