"""Random inpainting: A keeps 8% of the pixels (92% dropped, all channels alike), Gaussian noise 0.05.

    python -m dps_jax.main --config=configs/inpainting_random.py
    python -m dps_jax.main --config=configs/inpainting_random.py:ffhq256 --config.model.checkpoint=ffhq256.msgpack
"""

from ml_collections import ConfigDict

from dps_jax.config_base import base, is_paper, set_scale, use_solver


ZETA = 3.0                      # zeta of ps, ps+ and mcg at 50 steps (the tuned step count)


def settings(preset=None):
    """Every solver's settings for this task; DPS named."""
    c = base("inpainting_random", preset)
    c.operator = ConfigDict(dict(name="inpainting", mask_type="random", drop_fraction=0.92))
    set_scale(c, ZETA)
    # ADMM-TV's lam and rho: the best of a grid on 16 held-out images (benchmarks/admm_tv_grid.json);
    # not searched for the paper presets, which keep them.
    c.solver.admm_tv.update(dict(lam=0.0003, rho=0.03))
    c.solver.diffpir.update(dict(zeta=1.0, steps=20))     # DiffPIR's inpainting script
    if is_paper(c):
        set_scale(c, 0.5)
    return c


def get_config(preset=None):
    """What `--config=` runs; the paper presets run the paper's DPS, 1000 steps."""
    c = settings(preset)
    if not is_paper(c):     # the time-to-quality pick on the shipped prior (benchmarks/time_to_quality.json)
        use_solver(c, "ps", steps=250, scale=ZETA * 50 / 250)  # ZETA's total guidance at 250 steps
    return c
