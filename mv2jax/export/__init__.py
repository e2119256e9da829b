"""Export the BN-folded network to deployable artifacts: ONNX (NCHW graph written from the folded parameters, for
ONNX Runtime / OpenVINO) and StableHLO (`jax.export`, for cpu, cuda and tpu), each with a JSON sidecar describing
its preprocessing. `python -m mv2jax.export --help` for the command line."""

from mv2jax.export.artifact import FORMATS, export, load_artifact, load_images, read_sidecar
from mv2jax.export.source import class_names, data_config, load_model, model_name

__all__ = [
    "FORMATS",
    "class_names",
    "data_config",
    "export",
    "load_artifact",
    "load_images",
    "load_model",
    "model_name",
    "read_sidecar",
]
