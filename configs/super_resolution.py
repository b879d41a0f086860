"""DPS for super resolution. `--config=configs/super_resolution.py` runs on the shipped 32 x 32 prior;
`--config=configs/super_resolution.py:ffhq256` with `--config.model.checkpoint=ffhq256.msgpack` is the paper's setting."""

from dps_jax.config_defaults import task_config


def get_config(arg=None):
    return task_config("super_resolution", arg)
