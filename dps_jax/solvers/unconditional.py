"""Unconditional sampling from the prior: the DDPM (or DDIM) reverse process with no measurement
(registered as `vanilla`). The distance ||y - A(x0_hat)|| is recorded but never used, so a run shows how
far an unconditional sample is from explaining y.
"""

from __future__ import annotations

from dps_jax.prior import denoise
from dps_jax.solvers import base, dps


def update(x_t, c, noise, problem, prior, options: base.DiffusionOptions):
    den = denoise(prior, x_t, c)
    x_prime = base.reverse_update(x_t, den, c, noise["x"], options)
    return x_prime, {"distance": dps.distance(problem, den.x0_hat), "x0_hat": den.x0_hat}


SOLVER = base.Solver("vanilla", base.DiffusionOptions, init=base.start, update=update)
