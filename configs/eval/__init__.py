"""Configs of the evaluation command (`python -m dps_jax.evaluate`)."""
