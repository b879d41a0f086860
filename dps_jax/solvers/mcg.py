"""MCG, manifold constrained gradients (Chung et al. 2022), as the DPS paper compares with it.

The DPS step (`solvers.dps`), then the projection onto the measurement set {x : A(x) = y_t}, where
y_t = sqrt(alphas_cumprod) y + sqrt(1 - alphas_cumprod) z is the measurement noised to the level of the
step. Needs a linear A with a projection (`Operator.project`); on nonlinear deblurring, whose y is an
image, the official code's data-consistency step x + y_t - A(x) takes the projection's place
(`Operator.correct`), as in the paper's Table 4.
"""

from __future__ import annotations

import jax.numpy as jnp

from dps_jax import diffusion
from dps_jax.solvers import base, dps


def update(x_t, c, noise, problem, prior, options: dps.Options):
    x, record = dps.update(x_t, c, noise, problem, prior, options)
    y_t = diffusion.q_sample(problem.y, c, noise["y"])
    x = problem.op.correct(x, y_t)
    # how far the projection landed from y_t: ~0 for an exact one, CG's or the noise's share otherwise
    return x, {**record, "projection_residual": jnp.linalg.norm(problem.op(x) - y_t)}


SOLVER = base.Solver("mcg", dps.Options, init=base.start, update=update, draw=base.draw_x_and_y,
                     needs=frozenset({"projection_or_correction"}))
