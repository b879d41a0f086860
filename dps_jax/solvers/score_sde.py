"""Score-SDE style conditioning (Song et al. 2021; ILVR-like): after each unconditional reverse step,
project onto the measurement set {x : A(x) = y_t} of y noised to the level of the step,
y_t = sqrt(alphas_cumprod) y + sqrt(1 - alphas_cumprod) z. No gradient through the network.
Registered as `projection`. Needs a linear A with a projection.
"""

from __future__ import annotations

import jax.numpy as jnp

from dps_jax import diffusion
from dps_jax.prior import denoise
from dps_jax.solvers import base, dps


def update(x_t, c, noise, problem, prior, options: base.DiffusionOptions):
    den = denoise(prior, x_t, c)
    x_prime = base.reverse_update(x_t, den, c, noise["x"], options)
    y_t = diffusion.q_sample(problem.y, c, noise["y"])
    x = problem.op.project(x_prime, y_t)
    return x, {"distance": dps.distance(problem, den.x0_hat), "x0_hat": den.x0_hat,
               "projection_residual": jnp.linalg.norm(problem.op(x) - y_t)}


SOLVER = base.Solver("projection", base.DiffusionOptions, init=base.start, update=update, draw=base.draw_x_and_y,
                     needs=frozenset({"projection"}))
