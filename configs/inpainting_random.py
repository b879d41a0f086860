"""Random inpainting: A keeps 8% of the pixels (92% dropped, all channels alike), Gaussian noise 0.05.

    python -m dps_jax.main --config=configs/inpainting_random.py
    python -m dps_jax.main --config=configs/inpainting_random.py:ffhq256 --config.model.checkpoint=ffhq256.msgpack
"""

from ml_collections import ConfigDict

from dps_jax.config_base import base, is_paper, pick_default, set_scale


def settings(preset=None):
    """Every solver's settings for this task; DPS named."""
    c = base("inpainting_random", preset)
    c.operator = ConfigDict(dict(name="inpainting", mask_type="random", drop_fraction=0.92))
    set_scale(c, 3.0)
    # ADMM-TV's lam and rho: the best of a grid on 16 held-out images (benchmarks/admm_tv_grid.json);
    # not searched for the paper presets, which keep them.
    c.solver.admm_tv.update(dict(lam=0.0003, rho=0.03))
    if is_paper(c):
        set_scale(c, 0.5)
    return c


def get_config(preset=None):
    """What `--config=` runs: the settings with the task's default solver and step count (config_base.DEFAULT_PICKS)."""
    return pick_default(settings(preset))
