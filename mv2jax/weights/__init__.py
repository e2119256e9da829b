"""Weights below the models: checkpoint readers (safetensors, torch files, mv2jax's orbax directories), timm's Hub
cache, and the timm <-> mv2jax state-dict mapping. Nothing here imports the models or anything above them."""

from mv2jax.weights.checkpoint import adapt_input_conv, read_checkpoint, read_safetensors
from mv2jax.weights.hub import hub_config, hub_download, hub_weights
from mv2jax.weights.orbax_io import (
    CHECKPOINTS_DIR,
    checkpoint_steps,
    read_orbax,
    read_orbax_state_dict,
    read_orbax_weights,
    step_directory,
    write_orbax_state,
)
from mv2jax.weights.state_dict import (
    CheckpointMismatchError,
    check_state_dict,
    model_variables,
    mv2jax_to_timm,
    timm_to_mv2jax,
)

__all__ = [
    "CHECKPOINTS_DIR",
    "CheckpointMismatchError",
    "adapt_input_conv",
    "check_state_dict",
    "checkpoint_steps",
    "hub_config",
    "hub_download",
    "hub_weights",
    "model_variables",
    "mv2jax_to_timm",
    "read_checkpoint",
    "read_orbax",
    "read_orbax_state_dict",
    "read_orbax_weights",
    "read_safetensors",
    "step_directory",
    "timm_to_mv2jax",
    "write_orbax_state",
]
