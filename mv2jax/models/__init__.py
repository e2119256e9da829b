"""The MobileNetV2 family: architecture, layers, network, registry, factory and the fused inference network."""

from mv2jax.models.factory import create_model
from mv2jax.models.fused import FusedMobileNetV2, fuse_for_inference
from mv2jax.models.mobilenetv2 import MobileNetV2
from mv2jax.models.registry import list_models

__all__ = ["FusedMobileNetV2", "MobileNetV2", "create_model", "fuse_for_inference", "list_models"]
