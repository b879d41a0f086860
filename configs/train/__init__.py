"""Configs of the trainers (`python -m dps_jax.train.<what>`)."""
