"""Box inpainting: A keeps the pixels outside a square hole of half the image side, Gaussian noise 0.05.

    python -m dps_jax.main --config=configs/inpainting_box.py                   # 16 x 16 hole in 32 x 32
    python -m dps_jax.main --config=configs/inpainting_box.py:ffhq256 --config.model.checkpoint=ffhq256.msgpack
"""

from ml_collections import ConfigDict

from dps_jax.config_base import base, is_paper, set_scale, use_solver


ZETA = 3.0                      # zeta of ps, ps+ and mcg at 50 steps (the tuned step count)


def settings(preset=None):
    """Every solver's settings for this task; DPS named."""
    c = base("inpainting_box", preset)
    # A hole of side [lo, hi) at least `margin` pixels from the border, drawn per image.
    c.operator = ConfigDict(dict(name="inpainting", mask_type="box", box_len_range=(16, 17), margin=2))
    set_scale(c, ZETA)
    # ADMM-TV's lam and rho: the best of a grid on 16 held-out images (benchmarks/admm_tv_grid.json);
    # not searched for the paper presets, which keep them.
    c.solver.admm_tv.update(dict(lam=0.003, rho=1.0))
    c.solver.diffpir.update(dict(zeta=1.0, steps=20))     # DiffPIR's inpainting script
    c.solver.daps.lr = 5e-5           # DAPS's step size for this task (its task config)
    if is_paper(c):
        c.operator.update(dict(box_len_range=(128, 129), margin=16))    # 128 x 128 in 256 x 256
        set_scale(c, 0.5)
    return c


def get_config(preset=None):
    """What `--config=` runs; the paper presets run the paper's DPS, 1000 steps."""
    c = settings(preset)
    if not is_paper(c):     # the time-to-quality pick on the shipped prior (benchmarks/time_to_quality.json)
        use_solver(c, "sitcom", steps=10)  # half its reference's 20 steps: DPS-1000's quality in 0.4 of its time
    return c
