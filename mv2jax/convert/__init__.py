"""Weights in and out: timm state dicts <-> mv2jax models, and checkpoint readers."""

from mv2jax.convert.checkpoint import adapt_input_conv, hub_config, hub_download, hub_weights, read_checkpoint
from mv2jax.convert.orbax_io import read_orbax, read_orbax_state_dict, write_orbax_state
from mv2jax.convert.state_dict import (
    CheckpointMismatchError,
    check_state_dict,
    model_variables,
    mv2jax_to_timm,
    timm_to_mv2jax,
)

__all__ = [
    "CheckpointMismatchError",
    "adapt_input_conv",
    "check_state_dict",
    "hub_config",
    "hub_download",
    "hub_weights",
    "model_variables",
    "mv2jax_to_timm",
    "read_checkpoint",
    "read_orbax",
    "read_orbax_state_dict",
    "timm_to_mv2jax",
    "write_orbax_state",
]
