"""Fourier phase retrieval: A(x) = |F(pad(x))| with oversampling 2 (pad H / 4 per side), Gaussian noise 0.05.

The result depends on the start: the paper reports the best of 4 posterior samples.

    python -m dps_jax.main --config=configs/phase_retrieval.py
    python -m dps_jax.main --config=configs/phase_retrieval.py:ffhq256 --config.model.checkpoint=ffhq256.msgpack
"""

from ml_collections import ConfigDict

from dps_jax.config_base import base, is_paper, pick_default, set_scale


def settings(preset=None):
    """Every solver's settings for this task; DPS named."""
    c = base("phase_retrieval", preset)
    c.operator = ConfigDict(dict(name="phase_retrieval", oversample=2.0))
    c.num_samples = 4
    set_scale(c, 10.0)
    c.solver.daps.lr = 5e-5           # DAPS's step size for this task (its task config)
    if is_paper(c):
        set_scale(c, 0.4)
    return c


def get_config(preset=None):
    """What `--config=` runs: the settings with the task's default solver and step count (config_base.DEFAULT_PICKS)."""
    return pick_default(settings(preset))
