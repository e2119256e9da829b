"""The converters: timm weights -> an mv2jax checkpoint (`from_timm`), an mv2jax checkpoint -> timm weights
(`to_timm`), their check against timm (`verify`) and their command line (`cli`). The readers and the state-dict
mapping live in `mv2jax.weights` and are re-exported here under their public names."""

from mv2jax.weights import (
    CheckpointMismatchError,
    adapt_input_conv,
    check_state_dict,
    hub_config,
    hub_download,
    hub_weights,
    model_variables,
    mv2jax_to_timm,
    read_checkpoint,
    read_orbax,
    read_orbax_state_dict,
    timm_to_mv2jax,
    write_orbax_state,
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
