"""Fourier phase retrieval: A(x) = |F(pad(x))| with oversampling 2 (pad H / 4 per side), Gaussian noise 0.05.

The result depends on the start: the paper reports the best of 4 posterior samples.

    python -m dps_jax.main --config=configs/phase_retrieval.py
    python -m dps_jax.main --config=configs/phase_retrieval.py:ffhq256 --config.model.checkpoint=ffhq256.msgpack
"""

from ml_collections import ConfigDict

from dps_jax.config_base import base, is_paper, set_scale, use_solver


def settings(preset=None):
    """Every solver's settings for this task; DPS named."""
    c = base("phase_retrieval", preset)
    c.operator = ConfigDict(dict(name="phase_retrieval", oversample=2.0))
    c.num_samples = 4
    c.metrics.multimodal = True       # report the sample picked by residual and the oracle best, not the mean
    set_scale(c, 10.0)
    c.solver.daps.lr = 5e-5           # DAPS's step size for this task (its task config)
    c.solver.pnpdm.rho_min = 0.1      # PnP-DM's final coupling for this task (its commands.sh)
    if is_paper(c):
        set_scale(c, 0.4)
    return c


def get_config(preset=None):
    """What `--config=` runs; the paper presets run the paper's DPS, 1000 steps."""
    c = settings(preset)
    if not is_paper(c):     # the time-to-quality pick on the shipped prior (benchmarks/time_to_quality.json)
        use_solver(c, "daps", steps=100)
    return c
