"""The MobileNetV2 family: architecture, layers, network, registry, factory, the one loader of weights into a model
(`load_model`) and the fused inference network."""

from mv2jax.models.fused import FusedMobileNetV2, fuse_for_inference
from mv2jax.models.load import ClassifierMismatchError, LoadedModel, ModelMeta, create_model, load_model
from mv2jax.models.mobilenetv2 import MobileNetV2, MobileNetV2Features
from mv2jax.models.registry import list_models

__all__ = [
    "ClassifierMismatchError",
    "FusedMobileNetV2",
    "LoadedModel",
    "MobileNetV2",
    "MobileNetV2Features",
    "ModelMeta",
    "create_model",
    "fuse_for_inference",
    "list_models",
    "load_model",
]
