"""Pieces of `python -m mv2jax.benchmark`: shared timing/config (`common`), the mv2jax side (`jax_side`), the timm
side (`timm_side`), and the summary and table (`report`)."""
