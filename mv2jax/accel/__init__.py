"""Compile-only builds for accelerators this machine does not have: train.py's steps compiled by XLA:TPU (libtpu's
topologies, `pip install "jax[tpu]"`) and XLA:GPU (jax's CUDA plugin with a shipped target spec,
`pip install "jax[cuda12]"`), read for memory, cost and kernels per chip. `train.py --compile-only TARGET`;
`mv2jax.accel.compile_only.compile_check` for the report as a dict."""
