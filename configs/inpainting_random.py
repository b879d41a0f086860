"""DPS for inpainting random. `--config=configs/inpainting_random.py` runs on the shipped 32 x 32 prior;
`--config=configs/inpainting_random.py:ffhq256` with `--config.model.checkpoint=ffhq256.msgpack` is the paper's setting."""

from dps_jax.config_defaults import task_config


def get_config(arg=None):
    return task_config("inpainting_random", arg)
